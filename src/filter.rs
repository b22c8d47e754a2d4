//! Row filters in PostgREST style, `column=op.value`: parsed once, evaluated
//! against a row image. Used by mirror rules (`hot_when`), access rules and
//! subscriptions. Operators: eq, neq, lt, lte, gt, gte, `in.(a,b)`, `is.null`,
//! `not.is.null`.
//!
//! Values compare by the column's type. When the type's category is known
//! (`ColumnKind`, from the catalog; subscriptions have it): numbers compare
//! exactly as decimals (a `numeric` with 30 digits too, never through a
//! double), date/time values as instants (a literal may use another offset
//! or a space instead of `T`), booleans as booleans, the rest as text.
//! Without a kind (mirror rules), the event's JSON type decides: numbers as
//! numbers, booleans as booleans, text that reads as a timestamp against a
//! literal that reads as one as instants, other text as text.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use crate::model::{Datum, RowImage};

/// One condition on one column.
#[derive(Debug, Clone, PartialEq)]
pub struct RowFilter {
    pub column: Arc<str>,
    pub op: FilterOp,
}

/// The comparison of a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterOp {
    Eq(String),
    Neq(String),
    Lt(String),
    Lte(String),
    Gt(String),
    Gte(String),
    In(Vec<String>),
    IsNull,
    NotNull,
}

/// How a column's values compare: the category of its type
/// (`pg_type.typcategory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Integers, floats, numeric, money-free numbers (`N`).
    Number,
    Bool,
    /// date, time, timetz, timestamp, timestamptz (`D`).
    Time,
    /// Strings, enums, uuid, network addresses, intervals, …: as text.
    Text,
    /// Arrays, composites, ranges, json: only `is.null` and `not.is.null`.
    Structured,
}

impl ColumnKind {
    /// The kind of a `pg_type.typcategory` letter, or `J` for json and
    /// jsonb (which pg_type files under `U`, user-defined).
    pub fn from_category(category: u8) -> ColumnKind {
        match category {
            b'N' => ColumnKind::Number,
            b'B' => ColumnKind::Bool,
            b'D' => ColumnKind::Time,
            b'A' | b'C' | b'R' | b'P' | b'J' => ColumnKind::Structured,
            _ => ColumnKind::Text,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ColumnKind::Number => "a number",
            ColumnKind::Bool => "a boolean",
            ColumnKind::Time => "a date/time",
            ColumnKind::Text => "text",
            ColumnKind::Structured => "an array, composite, range or json value",
        }
    }
}

/// Why a filter text is not a filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {text:?}: {problem}; write column=op.value, for example status=eq.running, progress=gte.0.5, status=in.(queued,running) or finished_at=is.null")]
pub struct FilterError {
    pub text: String,
    pub problem: String,
}

impl RowFilter {
    pub fn parse(text: &str) -> Result<RowFilter, FilterError> {
        let err = |problem: &str| FilterError {
            text: text.to_owned(),
            problem: problem.to_owned(),
        };
        let (column, rest) = text
            .split_once('=')
            .ok_or_else(|| err("no '=' after the column name"))?;
        let column = column.trim();
        if column.is_empty() {
            return Err(err("the column name is empty"));
        }
        let (op, value) = match rest.split_once('.') {
            Some(("not", "is.null")) => ("not.is", "null"),
            Some(pair) => pair,
            None => return Err(err("no operator: expected op.value after '='")),
        };
        let value = value.to_owned();
        let op = match op {
            "eq" => FilterOp::Eq(value),
            "neq" => FilterOp::Neq(value),
            "lt" => FilterOp::Lt(value),
            "lte" => FilterOp::Lte(value),
            "gt" => FilterOp::Gt(value),
            "gte" => FilterOp::Gte(value),
            "in" => {
                let inner = value
                    .strip_prefix('(')
                    .and_then(|v| v.strip_suffix(')'))
                    .ok_or_else(|| err("in needs a parenthesised list, like in.(a,b)"))?;
                FilterOp::In(split_list(inner))
            }
            "is" if value == "null" => FilterOp::IsNull,
            "not.is" => FilterOp::NotNull,
            "is" => return Err(err("is supports only null (is.null, or not.is.null)")),
            other => {
                return Err(err(&format!(
                    "unknown operator {other:?} (use eq, neq, lt, lte, gt, gte, in, is, not.is)"
                )))
            }
        };
        Ok(RowFilter {
            column: column.into(),
            op,
        })
    }

    /// Whether the row passes, comparing by the event's JSON types. A column
    /// the row does not carry never passes (it may be an unchanged TOAST
    /// value: unknown is not a match).
    pub fn matches(&self, row: &RowImage) -> bool {
        self.matches_as(row, None)
    }

    /// Whether the row passes, comparing as `kind` says (when known).
    pub fn matches_as(&self, row: &RowImage, kind: Option<ColumnKind>) -> bool {
        let Some(value) = row.get(&self.column) else {
            return false;
        };
        let cmp = |literal: &str| compare(value, literal, kind);
        match &self.op {
            FilterOp::IsNull => *value == Datum::Null,
            FilterOp::NotNull => *value != Datum::Null,
            FilterOp::Eq(v) => cmp(v) == Some(Ordering::Equal),
            FilterOp::Neq(v) => matches!(cmp(v), Some(o) if o != Ordering::Equal),
            FilterOp::Lt(v) => cmp(v) == Some(Ordering::Less),
            FilterOp::Lte(v) => matches!(cmp(v), Some(Ordering::Less | Ordering::Equal)),
            FilterOp::Gt(v) => cmp(v) == Some(Ordering::Greater),
            FilterOp::Gte(v) => matches!(cmp(v), Some(Ordering::Greater | Ordering::Equal)),
            FilterOp::In(list) => list.iter().any(|v| cmp(v) == Some(Ordering::Equal)),
        }
    }

    /// Checks the filter's literals against the column's kind, so that a
    /// filter that could never match is refused up front with the reason.
    pub fn check_kind(&self, kind: ColumnKind) -> Result<(), FilterError> {
        let literals: Vec<&String> = match &self.op {
            FilterOp::IsNull | FilterOp::NotNull => return Ok(()),
            FilterOp::Eq(v)
            | FilterOp::Neq(v)
            | FilterOp::Lt(v)
            | FilterOp::Lte(v)
            | FilterOp::Gt(v)
            | FilterOp::Gte(v) => vec![v],
            FilterOp::In(list) => list.iter().collect(),
        };
        let ordering = matches!(
            self.op,
            FilterOp::Lt(_) | FilterOp::Lte(_) | FilterOp::Gt(_) | FilterOp::Gte(_)
        );
        let err = |problem: String| FilterError {
            text: self.to_string(),
            problem,
        };
        for literal in literals {
            let fits = match kind {
                ColumnKind::Number => Number::parse(literal).is_some(),
                ColumnKind::Bool => {
                    if ordering {
                        return Err(err(format!(
                            "column {} is a boolean: use eq, neq or in",
                            self.column
                        )));
                    }
                    literal == "true" || literal == "false"
                }
                ColumnKind::Time => instant(literal).is_some(),
                ColumnKind::Text => true,
                ColumnKind::Structured => {
                    return Err(err(format!(
                        "column {} holds {}: it can only be filtered with is.null or not.is.null",
                        self.column,
                        kind.describe()
                    )))
                }
            };
            if !fits {
                let example = match kind {
                    ColumnKind::Number => "a number like 42 or 0.5",
                    ColumnKind::Bool => "true or false",
                    _ => "an ISO 8601 date or timestamp like 2026-11-28 or 2026-11-28T03:14:02Z",
                };
                return Err(err(format!(
                    "{literal:?} is not {} but column {} is; write {example}",
                    kind.describe(),
                    self.column
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Display for RowFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.column;
        match &self.op {
            FilterOp::Eq(v) => write!(f, "{c}=eq.{v}"),
            FilterOp::Neq(v) => write!(f, "{c}=neq.{v}"),
            FilterOp::Lt(v) => write!(f, "{c}=lt.{v}"),
            FilterOp::Lte(v) => write!(f, "{c}=lte.{v}"),
            FilterOp::Gt(v) => write!(f, "{c}=gt.{v}"),
            FilterOp::Gte(v) => write!(f, "{c}=gte.{v}"),
            FilterOp::In(l) => write!(f, "{c}=in.({})", l.join(",")),
            FilterOp::IsNull => write!(f, "{c}=is.null"),
            FilterOp::NotNull => write!(f, "{c}=not.is.null"),
        }
    }
}

/// `a,"b,c",d` → `[a, b,c, d]`: double quotes protect commas.
fn split_list(inner: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for ch in inner.chars() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    out.push(current);
    out
}

/// Compares a value with a filter literal; `None` when they cannot be
/// compared (NULL, arrays, a non-number against a number).
fn compare(value: &Datum, literal: &str, kind: Option<ColumnKind>) -> Option<Ordering> {
    match (value, kind) {
        (Datum::Null | Datum::Array(_) | Datum::Object(_), _) => None,
        (_, Some(ColumnKind::Structured)) => None,
        (Datum::Int(i), _) => match literal.parse::<i64>() {
            Ok(l) => Some(i.cmp(&l)),
            Err(_) => Number::parse(&i.to_string())?.partial_cmp(&Number::parse(literal)?),
        },
        (Datum::Float(f), _) => {
            Number::parse(&f.to_string())?.partial_cmp(&Number::parse(literal)?)
        }
        (Datum::Bool(b), _) => match literal {
            "true" => Some(b.cmp(&true)),
            "false" => Some(b.cmp(&false)),
            _ => None,
        },
        // numeric (and NaN/Infinity of floats) travel as strings.
        (Datum::Text(s), Some(ColumnKind::Number)) => {
            Number::parse(s)?.partial_cmp(&Number::parse(literal)?)
        }
        (Datum::Text(s), Some(ColumnKind::Time)) => Some(instant(s)?.cmp(&instant(literal)?)),
        (Datum::Text(s), None) => match (looks_like_time(s), instant(literal)) {
            (true, Some(l)) => Some(instant(s)?.cmp(&l)),
            _ => Some(s.as_str().cmp(literal)),
        },
        (Datum::Text(s) | Datum::Json(s), _) => Some(s.as_str().cmp(literal)),
    }
}

/// A filter with its literals parsed once for its column's kind: what is
/// evaluated for every event. `eq` compares with a literal read once, and
/// `in.(…)` is one hash look-up whatever the number of values. Where the
/// kind is unknown, or a value does not have the shape its kind leads to
/// expect, it evaluates as `RowFilter::matches_as` does, so the result is
/// always the same.
#[derive(Debug, Clone)]
pub struct PreparedFilter {
    filter: RowFilter,
    kind: Option<ColumnKind>,
    prepared: Prepared,
}

#[derive(Debug, Clone)]
enum Prepared {
    /// No fast path: `RowFilter::matches_as`.
    Generic,
    /// A comparison with one literal; `negate`: `neq`.
    Compare {
        negate: bool,
        literal: Literal,
    },
    In(InSet),
}

/// A literal parsed for its column's kind.
#[derive(Debug, Clone)]
enum Literal {
    /// A number, with its `i64` when the text is one (compared as integers
    /// against integer values, as `compare` does).
    Number(Option<i64>, Number),
    Instant(i128),
    Bool(bool),
    Text(String),
}

/// The values of an `in.(…)`, by the kind's key.
#[derive(Debug, Clone)]
enum InSet {
    Number {
        ints: std::collections::HashSet<i64>,
        others: std::collections::HashSet<Number>,
    },
    Instant(std::collections::HashSet<i128>),
    Bool {
        any_true: bool,
        any_false: bool,
    },
    Text(std::collections::HashSet<String>),
}

impl PreparedFilter {
    pub fn new(filter: RowFilter, kind: Option<ColumnKind>) -> PreparedFilter {
        let prepared = kind
            .and_then(|kind| prepare(&filter.op, kind))
            .unwrap_or(Prepared::Generic);
        PreparedFilter {
            filter,
            kind,
            prepared,
        }
    }

    pub fn filter(&self) -> &RowFilter {
        &self.filter
    }

    pub fn kind(&self) -> Option<ColumnKind> {
        self.kind
    }

    /// Whether the row passes: the same answer as
    /// `self.filter().matches_as(row, self.kind())`.
    pub fn matches(&self, row: &RowImage) -> bool {
        let fast = match &self.prepared {
            Prepared::Generic => None,
            Prepared::Compare { negate, literal } => row
                .get(&self.filter.column)
                .and_then(|value| compare_literal(value, literal))
                .map(|found| match (found, negate) {
                    (Some(found), false) => accepts(&self.filter.op, found),
                    (Some(found), true) => found != Ordering::Equal,
                    (None, _) => false,
                }),
            Prepared::In(set) => row
                .get(&self.filter.column)
                .and_then(|value| in_set(value, set)),
        };
        match fast {
            Some(answer) => answer,
            None => self.filter.matches_as(row, self.kind),
        }
    }
}

/// Whether `found` satisfies the comparison operator `op`.
fn accepts(op: &FilterOp, found: Ordering) -> bool {
    match op {
        FilterOp::Eq(_) => found == Ordering::Equal,
        FilterOp::Lt(_) => found == Ordering::Less,
        FilterOp::Lte(_) => found != Ordering::Greater,
        FilterOp::Gt(_) => found == Ordering::Greater,
        FilterOp::Gte(_) => found != Ordering::Less,
        _ => false,
    }
}

fn prepare(op: &FilterOp, kind: ColumnKind) -> Option<Prepared> {
    let literal = |text: &str| -> Option<Literal> {
        Some(match kind {
            ColumnKind::Number => Literal::Number(text.parse().ok(), Number::parse(text)?),
            ColumnKind::Time => Literal::Instant(instant(text)?),
            ColumnKind::Bool => Literal::Bool(match text {
                "true" => true,
                "false" => false,
                _ => return None,
            }),
            ColumnKind::Text => Literal::Text(text.to_owned()),
            ColumnKind::Structured => return None,
        })
    };
    let compare = |text: &str, negate: bool| {
        Some(Prepared::Compare {
            negate,
            literal: literal(text)?,
        })
    };
    match op {
        FilterOp::Eq(v)
        | FilterOp::Lt(v)
        | FilterOp::Lte(v)
        | FilterOp::Gt(v)
        | FilterOp::Gte(v) => compare(v, false),
        FilterOp::Neq(v) => compare(v, true),
        FilterOp::In(list) => {
            let set = match kind {
                ColumnKind::Number => {
                    let mut ints = std::collections::HashSet::new();
                    let mut others = std::collections::HashSet::new();
                    for v in list {
                        let number = Number::parse(v)?;
                        match number.as_i64() {
                            Some(i) => ints.insert(i),
                            None => others.insert(number),
                        };
                    }
                    InSet::Number { ints, others }
                }
                ColumnKind::Time => {
                    InSet::Instant(list.iter().map(|v| instant(v)).collect::<Option<_>>()?)
                }
                ColumnKind::Bool => InSet::Bool {
                    any_true: list.iter().any(|v| v == "true"),
                    any_false: list.iter().any(|v| v == "false"),
                },
                ColumnKind::Text => InSet::Text(list.iter().cloned().collect()),
                ColumnKind::Structured => return None,
            };
            Some(Prepared::In(set))
        }
        FilterOp::IsNull | FilterOp::NotNull => None,
    }
}

/// `compare` against a parsed literal: `Some(None)` when they cannot be
/// compared, `None` when the value is not of the shape the fast path knows
/// (then `compare` decides).
fn compare_literal(value: &Datum, literal: &Literal) -> Option<Option<Ordering>> {
    Some(match (value, literal) {
        (Datum::Null, _) => None,
        (Datum::Int(i), Literal::Number(Some(l), _)) => Some(i.cmp(l)),
        (Datum::Float(_) | Datum::Text(_), Literal::Number(_, l)) => {
            value_number(value)?.partial_cmp(l)
        }
        (Datum::Text(s), Literal::Instant(l)) => Some(instant(s)?.cmp(l)),
        (Datum::Bool(b), Literal::Bool(l)) => Some(b.cmp(l)),
        (Datum::Text(s) | Datum::Json(s), Literal::Text(l)) => Some(s.as_str().cmp(l)),
        _ => return None,
    })
}

/// A float's or a numeric's number, as `compare` reads it.
fn value_number(value: &Datum) -> Option<Number> {
    match value {
        Datum::Float(f) => Number::parse(&f.to_string()),
        Datum::Text(s) => Number::parse(s),
        _ => None,
    }
}

/// The `in.(…)` answer by look-up, `None` for a value of another shape.
fn in_set(value: &Datum, set: &InSet) -> Option<bool> {
    Some(match (value, set) {
        (Datum::Null, _) => false,
        (Datum::Int(i), InSet::Number { ints, .. }) => ints.contains(i),
        (Datum::Float(_) | Datum::Text(_), InSet::Number { ints, others }) => {
            match value_number(value) {
                None => false,
                Some(number) => match number.as_i64() {
                    Some(i) => ints.contains(&i),
                    None => others.contains(&number),
                },
            }
        }
        (Datum::Text(s), InSet::Instant(set)) => instant(s).is_some_and(|i| set.contains(&i)),
        (
            Datum::Bool(b),
            InSet::Bool {
                any_true,
                any_false,
            },
        ) => {
            if *b {
                *any_true
            } else {
                *any_false
            }
        }
        (Datum::Text(s) | Datum::Json(s), InSet::Text(set)) => set.contains(s.as_str()),
        _ => return None,
    })
}

/// A decimal number compared exactly: `0.d1d2… × 10^exp`, or a special.
/// The form is canonical (no leading or trailing zeros, zero without sign
/// or exponent), so equal numbers are equal values and hash alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Number {
    NegInfinity,
    Finite {
        negative: bool,
        /// Significant digits, without leading or trailing zeros (empty: zero).
        digits: Vec<u8>,
        exp: i64,
    },
    Infinity,
    /// Postgres sorts NaN above every number; so does walcast.
    NaN,
}

impl Number {
    fn parse(text: &str) -> Option<Number> {
        let text = text.trim();
        match text {
            "NaN" | "nan" => return Some(Number::NaN),
            "Infinity" | "infinity" | "+Infinity" | "inf" => return Some(Number::Infinity),
            "-Infinity" | "-infinity" | "-inf" => return Some(Number::NegInfinity),
            _ => {}
        }
        let (negative, rest) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(at) => (&rest[..at], rest[at + 1..].parse::<i64>().ok()?),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
            || exponent.unsigned_abs() > 1_000_000
        {
            return None;
        }
        let all: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
        let leading = all.iter().take_while(|&&d| d == b'0').count();
        let mut digits = all[leading..].to_vec();
        while digits.last() == Some(&b'0') {
            digits.pop();
        }
        let exp = int.len() as i64 - leading as i64 + exponent;
        Some(Number::Finite {
            negative: negative && !digits.is_empty(),
            exp: if digits.is_empty() { 0 } else { exp },
            digits,
        })
    }

    /// The number as an `i64`, when it is an integer that fits.
    fn as_i64(&self) -> Option<i64> {
        let Number::Finite {
            negative,
            digits,
            exp,
        } = self
        else {
            return None;
        };
        if digits.is_empty() {
            return Some(0);
        }
        if *exp < digits.len() as i64 || *exp > 19 {
            return None;
        }
        let mut value: i128 = 0;
        for d in digits {
            value = value * 10 + i128::from(d - b'0');
        }
        for _ in digits.len() as i64..*exp {
            value *= 10;
        }
        i64::try_from(if *negative { -value } else { value }).ok()
    }

    fn rank(&self) -> u8 {
        match self {
            Number::NegInfinity => 0,
            Number::Finite { .. } => 1,
            Number::Infinity => 2,
            Number::NaN => 3,
        }
    }
}

impl PartialOrd for Number {
    fn partial_cmp(&self, other: &Number) -> Option<Ordering> {
        let (
            Number::Finite {
                negative: an,
                digits: ad,
                exp: ae,
            },
            Number::Finite {
                negative: bn,
                digits: bd,
                exp: be,
            },
        ) = (self, other)
        else {
            return Some(self.rank().cmp(&other.rank()));
        };
        let magnitude =
            |d: &Vec<u8>, e: i64, od: &Vec<u8>, oe: i64| match (d.is_empty(), od.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                (false, false) => e.cmp(&oe).then_with(|| d.cmp(od)),
            };
        Some(match (an, bn) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => magnitude(ad, *ae, bd, *be),
            (true, true) => magnitude(bd, *be, ad, *ae),
        })
    }
}

/// Whether event text has the shape of a date or timestamp (`YYYY-MM-DD…`).
fn looks_like_time(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 10 && b[4] == b'-' && b[7] == b'-' && b[..4].iter().all(u8::is_ascii_digit)
}

/// A date, time or timestamp as microseconds (since 1970-01-01 UTC for
/// dates and timestamps, since midnight for times), comparable across
/// offsets. Text without an offset counts as UTC. `±infinity` sort last and
/// first. Accepts `YYYY-MM-DD`, `YYYY-MM-DD[T ]HH:MM[:SS[.f]][Z|±HH[:MM]]`
/// and `HH:MM[:SS[.f]][Z|±HH[:MM]]`.
fn instant(text: &str) -> Option<i128> {
    let text = text.trim();
    match text {
        "infinity" | "+infinity" => return Some(i128::MAX),
        "-infinity" => return Some(i128::MIN),
        _ => {}
    }
    let b = text.as_bytes();
    // A time of day alone: HH:MM…
    if b.len() >= 5 && b[2] == b':' {
        return time_of_day(text);
    }
    // [-]YYYY…-MM-DD
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let year_end = rest.find('-')?;
    let year: i64 = rest[..year_end].parse().ok().filter(|_| year_end >= 4)?;
    let year = if negative { -year } else { year };
    let rest = &rest[year_end + 1..];
    let month: u32 = rest.get(..2)?.parse().ok()?;
    let day: u32 = rest
        .get(3..5)
        .filter(|_| rest.as_bytes().get(2) == Some(&b'-'))?
        .parse()
        .ok()?;
    // Postgres dates run from 4713 BC to 5874897 AD; a year beyond any
    // date is not a date (and would overflow the day count).
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year.unsigned_abs() > MAX_YEAR {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let rest = &rest[5..];
    let time = match rest.as_bytes().first() {
        None => 0,
        Some(b'T' | b't' | b' ') => time_of_day(&rest[1..])?,
        Some(_) => return None,
    };
    Some(i128::from(days) * 86_400_000_000 + time)
}

/// `HH:MM[:SS[.fraction]][Z|±HH[:MM]]` → microseconds (minus the offset).
fn time_of_day(text: &str) -> Option<i128> {
    let zone_at = text.find(['Z', 'z', '+', '-']).unwrap_or(text.len());
    let (clock, zone) = text.split_at(zone_at);
    let mut parts = clock.split(':');
    let hours: i128 = parse_two(parts.next()?)?;
    let minutes: i128 = parse_two(parts.next()?)?;
    let micros = match parts.next() {
        None => 0,
        Some(sec) => {
            let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
            if frac.len() > 9 || !frac.bytes().all(|d| d.is_ascii_digit()) {
                return None;
            }
            let mut frac_micros: i128 = 0;
            for d in frac.bytes().chain(std::iter::repeat(b'0')).take(6) {
                frac_micros = frac_micros * 10 + i128::from(d - b'0');
            }
            parse_two(whole)? * 1_000_000 + frac_micros
        }
    };
    if parts.next().is_some() || hours > 24 || minutes > 59 || micros > 60_999_999 {
        return None;
    }
    let offset_secs: i128 = match zone {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            let z = &zone[1..];
            let (h, m) = match (z.len(), z.split_once(':')) {
                (_, Some((h, m))) => (parse_two(h)?, parse_two(m)?),
                (2, None) => (parse_two(z)?, 0),
                (4, None) => (parse_two(&z[..2])?, parse_two(&z[2..])?),
                _ => return None,
            };
            sign * (h * 3600 + m * 60)
        }
    };
    Some((hours * 3600 + minutes * 60 - offset_secs) * 1_000_000 + micros)
}

fn parse_two(text: &str) -> Option<i128> {
    (text.len() == 2 && text.bytes().all(|d| d.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// The largest year (either way) a date literal may have: above Postgres's
/// own range, far below where the day count could overflow.
const MAX_YEAR: u64 = 10_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prepared filter answers as the filter does, for every operator,
    /// kind and value shape, including values its fast paths do not take.
    #[test]
    fn prepared_filters_answer_as_the_filters_do() {
        let values = [
            Datum::Null,
            Datum::Int(0),
            Datum::Int(42),
            Datum::Int(-7),
            Datum::Int(100),
            Datum::Int(i64::MAX),
            Datum::Float(0.5),
            Datum::Float(42.0),
            Datum::Float(f64::NAN),
            Datum::Float(-0.0),
            Datum::Float(1e300),
            Datum::Text("42".into()),
            Datum::Text("42.000".into()),
            Datum::Text("NaN".into()),
            Datum::Text("Infinity".into()),
            Datum::Text("123456789012345678901234567890.5".into()),
            Datum::Text("running".into()),
            Datum::Text("2026-11-28T03:14:02Z".into()),
            Datum::Text("2026-11-28 04:14:02+01".into()),
            Datum::Text("2026-11-28".into()),
            Datum::Text("03:14".into()),
            Datum::Text("".into()),
            Datum::Json("{\"a\":1}".into()),
            Datum::Bool(true),
            Datum::Bool(false),
            Datum::Array(vec![Datum::Int(1)]),
        ];
        let literals = [
            "42",
            "42.0",
            "4.2e1",
            "1e2",
            "-7",
            "0",
            "-0",
            "0.5",
            "NaN",
            "Infinity",
            "-Infinity",
            "9223372036854775807",
            "9223372036854775808",
            "123456789012345678901234567890.5",
            "running",
            "queued",
            "true",
            "false",
            "2026-11-28T03:14:02Z",
            "2026-11-28",
            "2026-11-28T04:14:02+01:00",
            "03:14:00",
            "",
            "abc",
            "{\"a\":1}",
        ];
        let kinds = [
            None,
            Some(ColumnKind::Number),
            Some(ColumnKind::Text),
            Some(ColumnKind::Time),
            Some(ColumnKind::Bool),
            Some(ColumnKind::Structured),
        ];
        let mut filters: Vec<String> = Vec::new();
        for op in ["eq", "neq", "lt", "lte", "gt", "gte"] {
            for literal in literals {
                filters.push(format!("v={op}.{literal}"));
            }
        }
        for window in literals.windows(3) {
            filters.push(format!("v=in.({})", window.join(",")));
        }
        filters.push("v=in.(42,NaN,true,running,2026-11-28,1e2,0.5)".into());
        filters.push("v=is.null".into());
        filters.push("v=not.is.null".into());
        let mut checked = 0;
        for text in &filters {
            let filter = RowFilter::parse(text).unwrap();
            for kind in kinds {
                let prepared = PreparedFilter::new(filter.clone(), kind);
                for value in &values {
                    let row = RowImage(vec![("v".into(), value.clone())]);
                    assert_eq!(
                        prepared.matches(&row),
                        filter.matches_as(&row, kind),
                        "{text} as {kind:?} on {value:?}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 20_000, "{checked}");
        // The fast paths are taken where the kind is known.
        let prepared = |text: &str, kind| {
            PreparedFilter::new(RowFilter::parse(text).unwrap(), Some(kind)).prepared
        };
        assert!(matches!(
            prepared("v=in.(1,2)", ColumnKind::Number),
            Prepared::In(InSet::Number { .. })
        ));
        assert!(matches!(
            prepared("v=in.(a,b)", ColumnKind::Text),
            Prepared::In(InSet::Text(_))
        ));
        assert!(matches!(
            prepared("v=eq.a", ColumnKind::Text),
            Prepared::Compare { negate: false, .. }
        ));
        assert!(matches!(
            prepared("v=neq.2026-01-01", ColumnKind::Time),
            Prepared::Compare { negate: true, .. }
        ));
    }

    fn row() -> RowImage {
        RowImage(vec![
            ("id".into(), Datum::Int(42)),
            ("status".into(), Datum::Text("running".into())),
            ("progress".into(), Datum::Float(0.5)),
            ("done".into(), Datum::Bool(false)),
            ("finished_at".into(), Datum::Null),
        ])
    }

    fn m(text: &str) -> bool {
        RowFilter::parse(text).unwrap().matches(&row())
    }

    #[test]
    fn operators() {
        assert!(m("status=eq.running"));
        assert!(!m("status=eq.queued"));
        assert!(m("status=neq.queued"));
        assert!(m("id=gt.9")); // numerically, not as text ("42" < "9")
        assert!(m("id=lte.42"));
        assert!(!m("id=lt.42"));
        assert!(m("progress=gte.0.5"));
        assert!(m("progress=lt.1"));
        assert!(m("status=in.(queued,running)"));
        assert!(!m("status=in.(queued,failed)"));
        assert!(m("finished_at=is.null"));
        assert!(!m("finished_at=not.is.null"));
        assert!(m("status=not.is.null"));
        assert!(m("done=eq.false"));
        assert!(!m("finished_at=eq.null"), "NULL equals nothing");
        assert!(!m("missing=eq.1"), "absent column never matches");
        assert!(!m("id=eq.abc"), "a number never equals a non-number");
    }

    #[test]
    fn numbers_compare_exactly_as_decimals() {
        let big = RowImage(vec![(
            "amount".into(),
            Datum::Text("123456789012345678901234567890.000000000000000001".into()),
        )]);
        let t = |f: &str| {
            RowFilter::parse(f)
                .unwrap()
                .matches_as(&big, Some(ColumnKind::Number))
        };
        assert!(t("amount=gt.123456789012345678901234567890"));
        assert!(
            !t("amount=eq.123456789012345678901234567890"),
            "a double would call these equal"
        );
        assert!(t(
            "amount=lt.123456789012345678901234567890.00000000000000001"
        ));
        assert!(t("amount=gte.1.2e29"));
        assert!(t("amount=lt.Infinity") && t("amount=gt.-Infinity"));
        let n = |a: &str, b: &str| {
            Number::parse(a)
                .unwrap()
                .partial_cmp(&Number::parse(b).unwrap())
        };
        assert_eq!(n("0.50", ".5"), Some(Ordering::Equal));
        assert_eq!(n("-0", "0"), Some(Ordering::Equal));
        assert_eq!(n("-2", "-10"), Some(Ordering::Greater));
        assert_eq!(n("9", "10"), Some(Ordering::Less));
        assert_eq!(n("NaN", "Infinity"), Some(Ordering::Greater));
        assert!(
            Number::parse("1.2.3").is_none()
                && Number::parse("abc").is_none()
                && Number::parse("").is_none()
        );
    }

    #[test]
    fn times_compare_as_instants() {
        let row = RowImage(vec![
            ("at".into(), Datum::Text("2026-11-28T03:14:02.5Z".into())),
            ("day".into(), Datum::Text("2026-11-28".into())),
            ("end".into(), Datum::Text("infinity".into())),
        ]);
        let t = |f: &str| {
            RowFilter::parse(f)
                .unwrap()
                .matches_as(&row, Some(ColumnKind::Time))
        };
        assert!(
            t("at=eq.2026-11-28T04:14:02.500+01:00"),
            "same instant, other offset"
        );
        assert!(t("at=gt.2026-11-28 03:14:02Z"));
        assert!(t("at=lt.2026-11-28T03:14:03"));
        assert!(t("at=gte.2026-11-28"));
        assert!(t("day=lt.2026-11-29") && t("day=eq.2026-11-28T00:00:00Z"));
        assert!(t("end=gt.9999-12-31"));
        // Without a kind, a timestamp-shaped value still compares as an instant.
        assert!(RowFilter::parse("at=eq.2026-11-28T04:14:02.5+01:00")
            .unwrap()
            .matches(&row));
        assert!(instant("2026-13-01").is_none() && instant("yesterday").is_none());
        // Found by fuzz/fuzz_targets/client.rs: a year of 20 digits overflowed.
        assert!(instant("201234567890123026-11-28T04567").is_none());
        assert!(RowFilter::parse("at=gte.201234567890123026-11-28")
            .unwrap()
            .check_kind(ColumnKind::Time)
            .is_err());
        assert!(instant("5874897-12-31").is_some());
        assert_eq!(instant("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(instant("-0043-03-15").map(|m| m < 0), Some(true));
    }

    #[test]
    fn literals_are_checked_against_the_column_kind() {
        let check = |f: &str, kind| RowFilter::parse(f).unwrap().check_kind(kind);
        assert!(check("progress=gt.0.5", ColumnKind::Number).is_ok());
        let err = check("progress=gt.half", ColumnKind::Number)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"half\" is not a number"), "{err}");
        assert!(check("done=gt.true", ColumnKind::Bool).is_err());
        assert!(check("at=gte.soon", ColumnKind::Time).is_err());
        assert!(check("tags=eq.x", ColumnKind::Structured).is_err());
        assert!(check("tags=is.null", ColumnKind::Structured).is_ok());
        assert!(check("id=in.(1,x)", ColumnKind::Number).is_err());
    }

    #[test]
    fn errors_say_what_to_write() {
        for (text, problem) in [
            ("status", "no '='"),
            ("status=running", "no operator"),
            ("status=like.run%", "unknown operator \"like\""),
            ("status=in.queued", "parenthesised list"),
            ("x=is.true", "is supports only null"),
            ("=eq.1", "column name is empty"),
        ] {
            let err = RowFilter::parse(text).unwrap_err().to_string();
            assert!(err.contains(problem), "{err}");
            assert!(err.contains("column=op.value"), "{err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "a=eq.1",
            "a=in.(x,y)",
            "a=is.null",
            "a=not.is.null",
            "a=gte.2",
        ] {
            assert_eq!(RowFilter::parse(text).unwrap().to_string(), text);
        }
    }
}

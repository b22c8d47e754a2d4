//! Row filters in PostgREST style, `column=op.value`: parsed once, evaluated
//! against a row image. Used by mirror rules (`hot_when`) and, later, by
//! subscriptions. Operators: eq, neq, lt, lte, gt, gte, `in.(a,b)`, `is.null`,
//! `not.is.null`. Values compare by the column's JSON type: numbers as
//! numbers, booleans as booleans, everything else as text.

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

    /// Whether the row passes. A column the row does not carry never passes
    /// (it may be an unchanged TOAST value: unknown is not a match).
    pub fn matches(&self, row: &RowImage) -> bool {
        let Some(value) = row.get(&self.column) else {
            return false;
        };
        match &self.op {
            FilterOp::IsNull => *value == Datum::Null,
            FilterOp::NotNull => *value != Datum::Null,
            FilterOp::Eq(v) => compare(value, v) == Some(Ordering::Equal),
            FilterOp::Neq(v) => matches!(compare(value, v), Some(o) if o != Ordering::Equal),
            FilterOp::Lt(v) => compare(value, v) == Some(Ordering::Less),
            FilterOp::Lte(v) => matches!(compare(value, v), Some(Ordering::Less | Ordering::Equal)),
            FilterOp::Gt(v) => compare(value, v) == Some(Ordering::Greater),
            FilterOp::Gte(v) => {
                matches!(compare(value, v), Some(Ordering::Greater | Ordering::Equal))
            }
            FilterOp::In(list) => list
                .iter()
                .any(|v| compare(value, v) == Some(Ordering::Equal)),
        }
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

/// Compares a value with a filter literal by the value's type; `None` when
/// they cannot be compared (NULL, arrays, a non-number against a number).
fn compare(value: &Datum, literal: &str) -> Option<Ordering> {
    match value {
        Datum::Null | Datum::Array(_) | Datum::Object(_) => None,
        Datum::Int(i) => match literal.parse::<i64>() {
            Ok(l) => Some(i.cmp(&l)),
            Err(_) => (*i as f64).partial_cmp(&literal.parse::<f64>().ok()?),
        },
        Datum::Float(f) => f.partial_cmp(&literal.parse::<f64>().ok()?),
        Datum::Bool(b) => match literal {
            "true" => Some(b.cmp(&true)),
            "false" => Some(b.cmp(&false)),
            _ => None,
        },
        Datum::Text(s) | Datum::Json(s) => Some(s.as_str().cmp(literal)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

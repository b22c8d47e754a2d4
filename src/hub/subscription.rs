//! What one subscriber asked for and may see: tables, operations, and row
//! filters (the client's own AND-ed with those its access rules bind), each
//! typed by its column's kind. Built once when the client subscribes; then
//! matched against every event of its tables.

use std::collections::HashMap;

use super::schema::Schema;
use crate::auth::{AuthError, Principal};
use crate::filter::{FilterOp, PreparedFilter, RowFilter};
use crate::model::{ChangeBody, ChangeEvent, Op, RowImage, TableName};

/// At most this many tables, filters or operations in one request.
pub const MAX_PARTS: usize = 64;

/// A subscription request as the client wrote it (query parameters of SSE
/// and state, or the fields of a WebSocket `subscribe`).
#[derive(Debug, Clone, Default)]
pub struct SubscriptionRequest {
    /// `schema.table` names; empty: every table the tenant streams and the
    /// token may read.
    pub tables: Vec<String>,
    /// `INSERT`, `UPDATE`, `DELETE`, `TRUNCATE`, `MESSAGE` (comma-separated
    /// lists allowed); empty: all but `MESSAGE`.
    pub ops: Vec<String>,
    /// `column=op.value`, AND-ed.
    pub filters: Vec<String>,
}

/// Why a subscription cannot be made: the HTTP status, a stable code, and a
/// message naming the part at fault and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl RequestError {
    pub fn bad(code: &'static str, message: String) -> RequestError {
        RequestError {
            status: 400,
            code,
            message,
        }
    }
}

impl From<AuthError> for RequestError {
    fn from(err: AuthError) -> Self {
        RequestError {
            status: err.status(),
            code: err.code(),
            message: err.to_string(),
        }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What one subscription may cost to match: `[server] max_filters` and
/// `max_in_values`.
#[derive(Debug, Clone, Copy)]
pub struct MatchLimits {
    pub max_filters: usize,
    pub max_in_values: usize,
}

impl Default for MatchLimits {
    fn default() -> Self {
        MatchLimits {
            max_filters: crate::config::DEFAULT_MAX_FILTERS,
            max_in_values: crate::config::DEFAULT_MAX_IN_VALUES,
        }
    }
}

impl SubscriptionRequest {
    /// Refuses a request whose filters would cost more to match than the
    /// limits allow, saying which limit and how to stay within it.
    pub fn check_limits(&self, limits: MatchLimits) -> Result<(), RequestError> {
        if self.filters.len() > limits.max_filters {
            return Err(RequestError::bad(
                "too_many_filters",
                format!(
                    "{} filters in one subscription; at most {} are allowed ([server] max_filters): combine values with in.(…) or split the subscription",
                    self.filters.len(),
                    limits.max_filters
                ),
            ));
        }
        for text in &self.filters {
            if let Ok(RowFilter {
                column,
                op: FilterOp::In(values),
            }) = RowFilter::parse(text)
            {
                if values.len() > limits.max_in_values {
                    return Err(RequestError::bad(
                        "too_many_values",
                        format!(
                            "the in.(…) filter on column {:?} lists {} values; at most {} are allowed ([server] max_in_values): split it over several subscriptions",
                            column.chars().take(64).collect::<String>(),
                            values.len(),
                            limits.max_in_values
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A set of operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ops(u8);

impl Ops {
    const ALL_ROWS: Ops = Ops(0b01111);

    fn bit(op: Op) -> u8 {
        match op {
            Op::Insert => 1,
            Op::Update => 2,
            Op::Delete => 4,
            Op::Truncate => 8,
            Op::Message => 16,
        }
    }

    pub fn contains(self, op: Op) -> bool {
        self.0 & Ops::bit(op) != 0
    }

    fn parse(items: &[String]) -> Result<Ops, RequestError> {
        let mut bits = 0;
        for item in items.iter().flat_map(|i| i.split(',')) {
            let op = match item.trim().to_ascii_uppercase().as_str() {
                "INSERT" => Op::Insert,
                "UPDATE" => Op::Update,
                "DELETE" => Op::Delete,
                "TRUNCATE" => Op::Truncate,
                "MESSAGE" => Op::Message,
                "*" => {
                    bits |= Ops::ALL_ROWS.0;
                    continue;
                }
                "" => continue,
                other => {
                    return Err(RequestError::bad(
                        "bad_op",
                        format!("op {other:?} is not an operation; use a comma-separated list of INSERT, UPDATE, DELETE, TRUNCATE, MESSAGE"),
                    ))
                }
            };
            bits |= Ops::bit(op);
        }
        Ok(if bits == 0 { Ops::ALL_ROWS } else { Ops(bits) })
    }
}

/// A validated subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Each subscribed table with every filter a row must pass, typed by
    /// its column's kind (when the catalog is known).
    tables: HashMap<TableName, Vec<PreparedFilter>>,
    ops: Ops,
    /// Logical messages too (asked with `MESSAGE`, allowed by a `*` rule
    /// without filters).
    messages: bool,
}

impl Subscription {
    /// Validates `request` for `principal` against the tenant's tables and,
    /// when known, its columns.
    pub fn build(
        request: &SubscriptionRequest,
        principal: &Principal,
        tenant_tables: &[TableName],
        schema: Option<&Schema>,
    ) -> Result<Subscription, RequestError> {
        if request.tables.len() > MAX_PARTS
            || request.filters.len() > MAX_PARTS
            || request.ops.len() > MAX_PARTS
        {
            return Err(RequestError::bad(
                "too_many_parts",
                format!("at most {MAX_PARTS} tables, filters and ops per subscription"),
            ));
        }
        let ops = Ops::parse(&request.ops)?;
        let listed = !request.tables.is_empty();
        let mut chosen: Vec<TableName> = Vec::new();
        for text in &request.tables {
            let table = crate::config::parse_table(text.trim())
                .map_err(|problem| RequestError::bad("bad_table", problem))?;
            if !tenant_tables.contains(&table) {
                return Err(RequestError::bad(
                    "unknown_table",
                    format!(
                        "table {table} is not streamed by tenant {}; it streams {}",
                        principal.tenant,
                        list(tenant_tables)
                    ),
                ));
            }
            if !chosen.contains(&table) {
                chosen.push(table);
            }
        }
        let mut client_filters = Vec::new();
        for text in &request.filters {
            let filter = RowFilter::parse(text)
                .map_err(|err| RequestError::bad("bad_filter", err.to_string()))?;
            client_filters.push(filter);
        }
        if !listed {
            if !client_filters.is_empty() && tenant_tables.len() > 1 {
                return Err(RequestError::bad(
                    "filter_needs_table",
                    format!("a filter needs the table it applies to: add table=schema.table (tenant {} streams {})", principal.tenant, list(tenant_tables)),
                ));
            }
            chosen = tenant_tables.to_vec();
        }
        let mut tables = HashMap::new();
        for table in chosen {
            let bound = match principal.table_access(&table) {
                Ok(bound) => bound,
                // Without a table named, "every table" means every table the
                // token may read.
                Err(_) if !listed => continue,
                Err(err) => return Err(err.into()),
            };
            let columns = schema.and_then(|s| s.columns(&table));
            let mut filters = Vec::new();
            for filter in client_filters.iter() {
                let kind = match columns {
                    Some(columns) => match columns.get(&filter.column) {
                        Some(kind) => {
                            filter.check_kind(*kind).map_err(|err| {
                                RequestError::bad("bad_filter", err.to_string())
                            })?;
                            Some(*kind)
                        }
                        None => {
                            return Err(RequestError::bad(
                                "unknown_column",
                                format!(
                                    "filter {filter}: table {table} has no column {:?}; its columns are {}",
                                    &*filter.column,
                                    columns.names().join(", ")
                                ),
                            ))
                        }
                    },
                    None => None,
                };
                push_new(&mut filters, filter.clone(), kind);
            }
            for filter in bound {
                let kind = columns.and_then(|c| c.get(&filter.column).copied());
                push_new(&mut filters, filter, kind);
            }
            tables.insert(table, filters);
        }
        let messages = ops.contains(Op::Message) && principal.may_read_messages();
        if ops.contains(Op::Message) && !messages && listed {
            return Err(RequestError {
                status: 403,
                code: "messages_denied",
                message: format!("role {:?} may not read logical messages: that needs an [[auth.rules]] entry with table = \"*\" and no filter", principal.role),
            });
        }
        if tables.is_empty() && !messages {
            return Err(RequestError {
                status: 403,
                code: "table_denied",
                message: format!(
                    "role {:?} may read none of tenant {}'s tables ({}); add an [[auth.rules]] entry for the role, or use a token with another role",
                    principal.role,
                    principal.tenant,
                    list(tenant_tables)
                ),
            });
        }
        Ok(Subscription {
            tables,
            ops,
            messages,
        })
    }

    /// The tables whose events this subscription looks at.
    pub fn tables(&self) -> impl Iterator<Item = &TableName> {
        self.tables.keys()
    }

    /// Whether it wants logical messages.
    pub fn wants_messages(&self) -> bool {
        self.messages
    }

    /// Whether `event` goes to this subscriber.
    pub fn matches(&self, event: &ChangeEvent) -> bool {
        let row = match &event.body {
            ChangeBody::Row { new, old, key, .. } => match event.op {
                Op::Delete => old.as_ref().or(key.as_ref()),
                _ => new.as_ref(),
            },
            _ => None,
        };
        self.matches_parts(event.table(), event.op, row)
    }

    /// [`matches`](Self::matches) on an event's parts: its table (none for
    /// messages), operation, and the row image filters apply to (the new
    /// row; for a DELETE the old row, or its key).
    pub fn matches_parts(&self, table: Option<&TableName>, op: Op, row: Option<&RowImage>) -> bool {
        if !self.ops.contains(op) {
            return false;
        }
        let Some(table) = table else {
            return op == Op::Message && self.messages;
        };
        let Some(filters) = self.tables.get(table) else {
            return false;
        };
        match op {
            // A truncate carries no row: it concerns every subscriber of
            // the table, whatever rows its filters select.
            Op::Truncate => true,
            _ => match row {
                Some(row) => filters.iter().all(|f| f.matches(row)),
                None => filters.is_empty(),
            },
        }
    }
}

/// Adds a filter unless the same one is there already (AND-ing a filter
/// twice selects the same rows, and would only cost twice).
fn push_new(
    filters: &mut Vec<PreparedFilter>,
    filter: RowFilter,
    kind: Option<crate::filter::ColumnKind>,
) {
    if !filters.iter().any(|f| *f.filter() == filter) {
        filters.push(PreparedFilter::new(filter, kind));
    }
}

fn list(tables: &[TableName]) -> String {
    tables
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

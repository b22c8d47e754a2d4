//! `GET /v1/{tenant}/state/{schema.table}`: the table's mirrored rows that
//! the token may read and the `filter`s select, with the stream `position`
//! they are consistent with, a page at a time (`limit`, `cursor`).
//! Subscribe `since` that position (WebSocket `since`, SSE `Last-Event-ID` /
//! `last_event_id`) to get the later changes; `event_ids` says which of them
//! a row already reflects.

use std::sync::Arc;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use warp::reply::Response;
use warp::Reply;

use super::client::{error, ClientContext};
use crate::hub::state::{Cursor, PageRequest, StateError, StateRow, DEFAULT_LIMIT, MAX_LIMIT};
use crate::hub::SubscriptionRequest;

const KNOWN: &[&str] = &["filter", "access_token", "limit", "cursor"];

pub async fn state(
    ctx: Arc<ClientContext>,
    tenant: String,
    table: String,
    raw_query: String,
    authorization: Option<String>,
) -> Response {
    let (hub, query, principal) = match ctx.open(&tenant, &raw_query, authorization.as_deref()) {
        Ok(opened) => opened,
        Err(reply) => return reply,
    };
    if let Some(unknown) = query.unknown(KNOWN) {
        return error(
            400,
            "unknown_parameter",
            &format!(
                "unknown query parameter {:?}; /state takes filter, limit, cursor and access_token",
                super::client::shorten(&unknown)
            ),
        );
    }
    let limit = match query.one("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return error(
                    400,
                    "bad_limit",
                    &format!(
                        "limit {:?} is not a number of rows from 1 to {MAX_LIMIT}",
                        super::client::shorten(text)
                    ),
                )
            }
        },
    };
    let cursor = match query.one("cursor") {
        None => None,
        Some(text) => match text.parse::<Cursor>() {
            Ok(cursor) => Some(cursor),
            Err(()) => {
                return error(
                    400,
                    "bad_cursor",
                    &format!(
                        "cursor {:?} is not one /state gave; pass the cursor of the previous page as it is, or none for the first page",
                        super::client::shorten(text)
                    ),
                )
            }
        },
    };
    let request = SubscriptionRequest {
        tables: vec![table],
        ops: Vec::new(),
        filters: query.all("filter").to_vec(),
    };
    let subscription = match ctx.subscription(&hub, &request, &principal) {
        Ok(subscription) => subscription,
        Err(err) => return err.into(),
    };
    let Some(table) = subscription.tables().next().cloned() else {
        return error(403, "table_denied", "the token may not read this table");
    };
    let page = PageRequest { limit, cursor };
    match crate::hub::state::read_page(&hub, &table, &subscription, page).await {
        Ok(page) => {
            let event_ids: Vec<String> = page.rows.iter().map(|r| r.event_id.to_string()).collect();
            let body = Body {
                tenant: hub.tenant.as_str(),
                table: table.to_string(),
                position: page.position.to_string(),
                count: page.rows.len(),
                rows: page.rows.iter().map(Row).collect(),
                event_ids,
                cursor: page.next.map(|c| c.to_string()),
            };
            warp::reply::json(&body).into_response()
        }
        Err(err @ (StateError::NoRedis { .. } | StateError::NotMirrored { .. })) => {
            error(404, "not_mirrored", &err.to_string())
        }
        Err(err @ StateError::Rebuilt { .. }) => error(409, "state_rebuilt", &err.to_string()),
        Err(err @ StateError::Busy { .. }) => {
            let mut reply = error(503, "state_busy", &err.to_string());
            reply.headers_mut().insert(
                warp::http::header::RETRY_AFTER,
                warp::http::HeaderValue::from_static("1"),
            );
            reply
        }
        Err(err @ StateError::Redis(_)) => error(503, "redis_unavailable", &err.to_string()),
    }
}

/// The answer, in this order.
#[derive(Serialize)]
struct Body<'a> {
    tenant: &'a str,
    table: String,
    position: String,
    count: usize,
    rows: Vec<Row<'a>>,
    /// The id of the event that wrote each row, by index.
    event_ids: Vec<String>,
    cursor: Option<String>,
}

/// A row as a JSON object, each value with the bytes the mirror holds.
struct Row<'a>(&'a StateRow);

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.fields.len()))?;
        for (name, value) in &self.0.fields {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

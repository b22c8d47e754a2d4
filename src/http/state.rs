//! `GET /v1/{tenant}/state/{schema.table}`: the table's mirrored rows that
//! the token may read and the `filter`s select, with the stream `position`
//! they are consistent with. Subscribe `since` that position (WebSocket
//! `since`, SSE `Last-Event-ID` / `last_event_id`) to get exactly the later
//! changes.

use std::sync::Arc;

use serde_json::json;
use warp::reply::Response;
use warp::Reply;

use super::client::{error, ClientContext};
use crate::hub::state::StateError;
use crate::hub::SubscriptionRequest;

const KNOWN: &[&str] = &["filter", "access_token"];

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
                "unknown query parameter {:?}; /state takes filter and access_token",
                super::client::shorten(&unknown)
            ),
        );
    }
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
    match crate::hub::state::read(&hub, &table, &subscription).await {
        Ok(state) => warp::reply::json(&json!({
            "tenant": hub.tenant.as_str(),
            "table": table.to_string(),
            "position": state.position.to_string(),
            "count": state.rows.len(),
            "rows": state.rows,
        }))
        .into_response(),
        Err(err @ (StateError::NoRedis { .. } | StateError::NotMirrored { .. })) => {
            error(404, "not_mirrored", &err.to_string())
        }
        Err(err @ StateError::TooMany { .. }) => error(413, "too_many_rows", &err.to_string()),
        Err(err @ StateError::Redis(_)) => error(503, "redis_unavailable", &err.to_string()),
    }
}

//! Metric names (`walcast_<stage>_<name>_<unit>[_total]`), label keys and
//! their descriptions, in one place. Recording goes through the `metrics`
//! facade; with no recorder installed it costs next to nothing.

/// Label key: the tenant id.
pub const TENANT: &str = "tenant";
/// Label key: the mirrored table.
pub const TABLE: &str = "table";

/// Resident memory of the process.
pub const PROCESS_RSS_BYTES: &str = "walcast_process_rss_bytes";
/// Row changes, truncates and messages decoded, by op.
pub const SOURCE_CHANGES: &str = "walcast_source_changes_total";
/// Transactions committed to the sink.
pub const SOURCE_TRANSACTIONS: &str = "walcast_source_transactions_total";
/// Replication sessions that ended in an error and were retried.
pub const TENANT_RECONNECTS: &str = "walcast_tenant_reconnects_total";
/// Sessions of the tenant that ended in a panic (a bug; the tenant restarted).
pub const TENANT_PANICS: &str = "walcast_tenant_panics_total";
/// Panics while delivering a tenant's events (its subscribers were cut off).
pub const HUB_PANICS: &str = "walcast_hub_panics_total";
/// Connections open now, by listener (`client`, `ops`).
pub const HTTP_CONNECTIONS: &str = "walcast_http_connections";
/// Connections and streams refused by a cap, by reason.
pub const HTTP_REFUSED: &str = "walcast_http_refused_total";
/// Connections closed by a deadline, by kind (`head`, `write`).
pub const HTTP_TIMEOUTS: &str = "walcast_http_timeouts_total";
/// Label key: which listeners (`client`, `ops`).
pub const LISTENER: &str = "listener";
/// Label key: which deadline.
pub const KIND: &str = "kind";
/// Seconds from commit in Postgres to durably in the sink, of the last
/// transaction written.
pub const SOURCE_LAG_SECONDS: &str = "walcast_source_lag_seconds";
/// pgoutput messages that could not be decoded (the session reconnects).
pub const SOURCE_DECODE_ERRORS: &str = "walcast_source_decode_errors_total";
/// 1 while a replication session of the tenant streams from its slot.
pub const SOURCE_SLOT_ACTIVE: &str = "walcast_source_slot_active";
/// Label key: the change's op.
pub const OP: &str = "op";
/// WAL written since the slot's confirmed position.
pub const SOURCE_SLOT_LAG_BYTES: &str = "walcast_source_slot_lag_bytes";
/// Rows copied into the Redis mirror by snapshots.
pub const SNAPSHOT_ROWS_COPIED: &str = "walcast_snapshot_rows_copied_total";
/// Rows of the table being snapshotted (the goal of the running snapshot).
pub const SNAPSHOT_ROWS_TOTAL: &str = "walcast_snapshot_rows";
/// Batches written to Redis, and how long each took.
pub const REDIS_WRITE_SECONDS: &str = "walcast_redis_write_seconds";
/// Failed Redis writes (each is retried).
pub const REDIS_WRITE_ERRORS: &str = "walcast_redis_write_errors_total";
/// New rows written to the mirror as plain commands rather than through the
/// Lua script (0 while Redis refuses the CLIENT commands the fence needs).
pub const REDIS_PLAIN_ROWS: &str = "walcast_redis_plain_rows_total";
/// Label key: the transport of a subscriber (`sse`, `ws`).
pub const TRANSPORT: &str = "transport";
/// Label key: why a request was refused (the error code).
pub const REASON: &str = "reason";
/// Subscribers connected now, by transport (and tenant).
pub const DELIVERY_SUBSCRIBERS: &str = "walcast_delivery_subscribers";
/// Events handed to subscribers' queues.
pub const DELIVERY_EVENTS: &str = "walcast_delivery_events_total";
/// Events a subscriber's full queue could not take (it is cut off).
pub const DELIVERY_DROPPED: &str = "walcast_delivery_dropped_events_total";
/// Subscribers cut off because they did not keep up, by reason
/// (`queue_events`, `queue_bytes`, `delivery_buffer`, `hub_behind`).
pub const DELIVERY_SLOW_DISCONNECTS: &str = "walcast_delivery_slow_disconnects_total";
/// Requests refused by authentication or access rules, by reason.
pub const DELIVERY_AUTH_FAILURES: &str = "walcast_delivery_auth_failures_total";
/// Gaps sent to clients (retention, resync), by reason.
pub const DELIVERY_GAPS: &str = "walcast_delivery_gaps_total";

/// Registers the descriptions (once, at start-up, after installing a recorder).
pub fn describe() {
    metrics::describe_gauge!(
        SOURCE_LAG_SECONDS,
        metrics::Unit::Seconds,
        "From commit in Postgres to durably in the sink, last transaction."
    );
    metrics::describe_counter!(
        SOURCE_DECODE_ERRORS,
        "pgoutput messages that could not be decoded."
    );
    metrics::describe_gauge!(
        SOURCE_SLOT_ACTIVE,
        "1 while a replication session streams from the tenant's slot."
    );
    metrics::describe_gauge!(
        PROCESS_RSS_BYTES,
        metrics::Unit::Bytes,
        "Resident memory of the walcast process."
    );
    metrics::describe_counter!(
        SOURCE_CHANGES,
        "Row changes, truncates and messages decoded, by op."
    );
    metrics::describe_counter!(SOURCE_TRANSACTIONS, "Transactions committed to the sink.");
    metrics::describe_counter!(
        TENANT_RECONNECTS,
        "Replication sessions that ended in an error and were retried."
    );
    metrics::describe_counter!(
        TENANT_PANICS,
        "Sessions of the tenant that ended in a panic (the tenant restarted alone)."
    );
    metrics::describe_counter!(
        HUB_PANICS,
        "Panics while delivering a tenant's events (its subscribers were cut off and resume)."
    );
    metrics::describe_gauge!(
        HTTP_CONNECTIONS,
        "Connections open now, by listener (client, ops)."
    );
    metrics::describe_counter!(
        HTTP_REFUSED,
        "Client connections and streams refused by a cap, by reason."
    );
    metrics::describe_counter!(
        HTTP_TIMEOUTS,
        "Client connections closed by a deadline, by kind (head, write)."
    );
    metrics::describe_gauge!(
        SOURCE_SLOT_LAG_BYTES,
        metrics::Unit::Bytes,
        "WAL written since the slot's confirmed position."
    );
    metrics::describe_counter!(
        SNAPSHOT_ROWS_COPIED,
        "Rows copied into the Redis mirror by snapshots."
    );
    metrics::describe_gauge!(
        SNAPSHOT_ROWS_TOTAL,
        "Rows of the table the running snapshot is copying."
    );
    metrics::describe_histogram!(
        REDIS_WRITE_SECONDS,
        metrics::Unit::Seconds,
        "Time to write one batch to Redis."
    );
    metrics::describe_gauge!(
        DELIVERY_SUBSCRIBERS,
        "Subscribers connected now, by tenant and transport."
    );
    metrics::describe_counter!(DELIVERY_EVENTS, "Events handed to subscribers' queues.");
    metrics::describe_counter!(
        DELIVERY_DROPPED,
        "Events a subscriber's full queue could not take (the subscriber is cut off)."
    );
    metrics::describe_counter!(
        DELIVERY_SLOW_DISCONNECTS,
        "Subscribers cut off because they did not keep up."
    );
    metrics::describe_counter!(
        DELIVERY_AUTH_FAILURES,
        "Requests refused by token checks or access rules, by reason."
    );
    metrics::describe_counter!(DELIVERY_GAPS, "Gaps sent to clients, by reason.");
    metrics::describe_counter!(
        REDIS_WRITE_ERRORS,
        "Failed Redis batch writes (each is retried)."
    );
    metrics::describe_counter!(
        REDIS_PLAIN_ROWS,
        "New rows written to the Redis mirror as plain commands (the fast path)."
    );
}

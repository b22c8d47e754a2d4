//! Metric names (`walcast_<stage>_<name>_<unit>[_total]`), label keys and
//! their descriptions, in one place. Recording goes through the `metrics`
//! facade; with no recorder installed it costs next to nothing.

/// Label key: the tenant id.
pub const TENANT: &str = "tenant";
/// Label key: the mirrored table.
pub const TABLE: &str = "table";

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

/// Registers the descriptions (once, at start-up, after installing a recorder).
pub fn describe() {
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
    metrics::describe_counter!(
        REDIS_WRITE_ERRORS,
        "Failed Redis batch writes (each is retried)."
    );
}

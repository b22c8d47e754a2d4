//! Fault injection for the tests of failure containment, compiled into debug
//! builds only (release builds get an empty inline function).
//!
//! `WALCAST_FAULTS=point:tenant[:times],…` makes `inject(point, tenant)`
//! panic the first `times` (default 1) times it is reached for that tenant.
//! Points: `pipeline` (the tenant's session, after it starts streaming),
//! `redis_writer` (the task that writes a tenant's batches to Redis),
//! `hub` (the task that hands a tenant's events to its subscribers).

/// Panics when `WALCAST_FAULTS` asks for a fault at `point` for `tenant`.
#[cfg(debug_assertions)]
pub fn inject(point: &str, tenant: &str) {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;

    static PLAN: OnceLock<HashMap<(String, String), AtomicU32>> = OnceLock::new();
    let plan = PLAN.get_or_init(|| {
        let text = std::env::var("WALCAST_FAULTS").unwrap_or_default();
        text.split(',')
            .filter_map(|item| {
                let mut parts = item.trim().split(':');
                let point = parts.next()?.to_owned();
                let tenant = parts.next()?.to_owned();
                let times = parts.next().and_then(|t| t.parse().ok()).unwrap_or(1);
                Some(((point, tenant), AtomicU32::new(times)))
            })
            .collect()
    });
    if let Some(left) = plan.get(&(point.to_owned(), tenant.to_owned())) {
        let fire = left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if fire {
            panic!("injected fault at {point} for tenant {tenant} (WALCAST_FAULTS)");
        }
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn inject(_point: &str, _tenant: &str) {}

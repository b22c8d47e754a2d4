//! One supervised task per tenant: run its pipeline, restart it with back-off
//! on errors, report its state. A failing tenant never slows another: each has
//! its own connections, task and back-off.

mod pipeline;
mod restart;
pub mod snapshot;

pub use pipeline::{PipelineError, PipelineOptions};
pub use restart::{Backoff, INITIAL_BACKOFF, MAX_BACKOFF};

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::TenantConfig;
use crate::sink::EventSink;

/// What a tenant is doing, for logs and (later) `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantState {
    Starting,
    Streaming,
    Retrying {
        attempt: u32,
        error: String,
    },
    Stopped,
    /// Gave up (only with `PipelineOptions::give_up_on_definite`).
    Failed {
        error: String,
    },
}

/// A running tenant.
pub struct TenantHandle {
    pub id: crate::config::TenantId,
    pub cancel: CancellationToken,
    pub state: watch::Receiver<TenantState>,
}

/// Runs one tenant until `cancel` fires (or, with `give_up_on_definite`, until
/// an error that needs a human). Returns the error it gave up on, if any.
pub async fn run_tenant(
    tenant: TenantConfig,
    options: PipelineOptions,
    sink: Arc<dyn EventSink>,
    cancel: CancellationToken,
    state: watch::Sender<TenantState>,
) -> Result<(), PipelineError> {
    let seed = tenant
        .id
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
        ^ u64::from(std::process::id());
    let mut backoff = Backoff::new(seed);
    let mut progress = pipeline::Progress::default();
    loop {
        let result = pipeline::run_session(
            &tenant,
            &options,
            &*sink,
            &cancel,
            &state,
            &mut progress,
            &mut backoff,
        )
        .await;
        let err = match result {
            Ok(()) => {
                state.send_replace(TenantState::Stopped);
                return Ok(());
            }
            Err(err) => err,
        };
        let text = error_chain(&err);
        if err.is_fatal() || (options.give_up_on_definite && !err.is_transient()) {
            state.send_replace(TenantState::Failed { error: text });
            return Err(err);
        }
        metrics::counter!(crate::metrics::TENANT_RECONNECTS, crate::metrics::TENANT => tenant.id.to_string()).increment(1);
        let delay = backoff.next_delay(!err.is_transient());
        tracing::warn!(tenant = %tenant.id, error = %text, retry_in_ms = delay.as_millis() as u64, "tenant stream failed, retrying");
        state.send_replace(TenantState::Retrying {
            attempt: backoff.attempt(),
            error: text,
        });
        tokio::select! {
            biased;
            // Shutdown while waiting: nothing is in flight.
            _ = cancel.cancelled() => {
                state.send_replace(TenantState::Stopped);
                return Ok(());
            }
            // Back-off elapsed: try again.
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// `walcast resync`: takes a new snapshot of the tenant's mirrored tables
/// now, when no session holds its slot; returns `false` (after removing the
/// epoch marker, so that the running walcast re-snapshots by itself) when one
/// does.
pub async fn resync(
    tenant: &TenantConfig,
    mirror: &crate::sink::RedisSink,
) -> Result<bool, PipelineError> {
    let client = crate::source::connect(tenant, "walcast resync").await?;
    crate::source::ensure_publication(&client, tenant).await?;
    let slot = crate::source::slot_state(&client, tenant).await?;
    mirror
        .forget_epoch()
        .await
        .map_err(|source| PipelineError::Sink {
            tenant: tenant.id.to_string(),
            source,
        })?;
    if slot == Some(true) {
        return Ok(false);
    }
    let pending = pipeline::snapshot_into(&client, tenant, mirror, slot).await?;
    // The slot stays; the running daemon (or the next start) streams from
    // the snapshot's point.
    drop(pending);
    Ok(true)
}

/// An error and its causes on one line, joined by ": ".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their cause in their own text: say it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

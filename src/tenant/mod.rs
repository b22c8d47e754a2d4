//! One supervised task per tenant: run its pipeline, restart it with back-off
//! on errors, report its state. A failing tenant never slows another: each has
//! its own connections, task and back-off.

mod pipeline;
pub mod policy;
mod restart;
pub mod snapshot;

pub use pipeline::{PipelineError, PipelineOptions};
pub use policy::{directive, Directive};
pub use restart::{Backoff, INITIAL_BACKOFF, MAX_BACKOFF};

pub use crate::report::{error_chain, panic_message};

use std::sync::Arc;

use futures_util::FutureExt;
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
    /// Gave up: its output is gone, or (only with
    /// `PipelineOptions::give_up_on_definite`) it needs a human.
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

/// Runs one tenant until `cancel` fires, its output is gone, or (with
/// `give_up_on_definite`) an error needs a human. Returns the error it gave
/// up on, if any. Errors and panics of a session restart it as
/// `policy::directive` says.
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
        // A panic anywhere in the session ends this session only: the
        // tenant restarts from its last confirmed position (`progress`
        // moves only after the sink committed), other tenants never notice.
        let session = pipeline::run_session(
            &tenant,
            &options,
            &*sink,
            &cancel,
            &state,
            &mut progress,
            &mut backoff,
        );
        let result = match std::panic::AssertUnwindSafe(session).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => {
                metrics::counter!(crate::metrics::TENANT_PANICS, crate::metrics::TENANT => tenant.id.to_string()).increment(1);
                Err(PipelineError::Panicked {
                    tenant: tenant.id.to_string(),
                    message: panic_message(&*panic),
                })
            }
        };
        let err = match result {
            Ok(()) => {
                state.send_replace(TenantState::Stopped);
                return Ok(());
            }
            Err(err) => err,
        };
        let text = error_chain(&err);
        let directive = directive(&err);
        let give_up = match directive {
            Directive::Stop => true,
            Directive::Park => options.give_up_on_definite,
            Directive::Retry => false,
        };
        if give_up {
            state.send_replace(TenantState::Failed { error: text });
            return Err(err);
        }
        metrics::counter!(crate::metrics::TENANT_RECONNECTS, crate::metrics::TENANT => tenant.id.to_string()).increment(1);
        let delay = backoff.next_delay(directive == Directive::Park);
        if directive == Directive::Park {
            tracing::error!(tenant = %tenant.id, error = %text, retry_in_ms = delay.as_millis() as u64, "tenant needs a fix (see the error); retrying slowly");
        } else {
            tracing::warn!(tenant = %tenant.id, error = %text, retry_in_ms = delay.as_millis() as u64, "tenant stream failed, retrying");
        }
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
    mirror.set_default_keys(&crate::source::mirror_keys(&client, tenant).await?);
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

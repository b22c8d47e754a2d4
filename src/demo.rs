//! `walcast demo`: a first try with nothing to set up. Starts a throwaway
//! Postgres cluster (from the installed binaries) with the example schema,
//! writes a little task and environment activity into it, and prints the
//! change events walcast streams from it. Ctrl-C stops and removes everything.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::app::AppError;
use crate::config::{self, Config};
use crate::localdev::{LocalError, LocalPostgres};
use crate::sink::{EventSink, StdoutSink};
use crate::tenant::{run_tenant, PipelineOptions, TenantState};

const EXAMPLE_SCHEMA: &str = include_str!("../sql/example_schema.sql");
/// How often the generator writes a change.
const GENERATOR_INTERVAL: Duration = Duration::from_millis(700);

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo: could not start a local Postgres")]
    Postgres(#[source] LocalError),
    #[error("demo: could not load the example schema")]
    Schema(#[source] LocalError),
    #[error("demo: internal config is invalid")]
    Config(#[source] config::ConfigError),
    #[error(transparent)]
    App(#[from] AppError),
}

pub async fn demo(root: CancellationToken) -> Result<(), DemoError> {
    eprintln!("demo: starting a throwaway PostgreSQL cluster (wal_level=logical)...");
    let pg = tokio::task::spawn_blocking(LocalPostgres::start)
        .await
        .expect("postgres start task panicked")
        .map_err(DemoError::Postgres)?;
    let pg = Arc::new(pg);
    pg.psql("postgres", "create database platform")
        .map_err(DemoError::Schema)?;
    pg.psql("platform", EXAMPLE_SCHEMA)
        .map_err(DemoError::Schema)?;
    let url = pg.url("platform");
    let text = format!(
        "[[tenants]]\nid = \"demo\"\nurl = \"{url}\"\ntables = [\"public.tasks\", \"public.environments\", \"public.deployments\", \"public.audit_log\"]\n"
    );
    let config: Config =
        config::parse(Path::new("<demo>"), &text, &|_| None).map_err(DemoError::Config)?;
    let tenant = config.tenants[0].clone();
    eprintln!(
        "demo: Postgres is at {url} (psql -h {} -p {} -U postgres platform)",
        pg.socket_dir().display(),
        pg.port()
    );
    eprintln!("demo: writing task and environment activity; change events follow as JSON lines. Ctrl-C stops and removes everything.");

    let (state_tx, mut state_rx) = watch::channel(TenantState::Starting);
    let sink: Arc<dyn EventSink> = Arc::new(StdoutSink::default());
    let cancel = root.child_token();
    let pipeline = tokio::spawn(run_tenant(
        tenant,
        PipelineOptions::default(),
        sink,
        cancel.clone(),
        state_tx,
    ));
    // Start writing once walcast streams, so the first events are not missed.
    let _ = state_rx.wait_for(|s| *s == TenantState::Streaming).await;
    let generator = tokio::spawn(generate(Arc::clone(&pg), cancel.clone()));

    let signals = crate::app::shutdown_signal();
    tokio::select! {
        // Ctrl-C or SIGTERM.
        _ = signals => {}
        // The pipeline gave up (it only does on a fatal error).
        _ = cancel.cancelled() => {}
    }
    cancel.cancel();
    let _ = generator.await;
    let _ = tokio::time::timeout(config.shutdown_timeout, pipeline).await;
    eprintln!("demo: stopped; removing the throwaway cluster");
    drop(pg);
    Ok(())
}

/// Writes task and environment activity until cancelled.
async fn generate(pg: Arc<LocalPostgres>, cancel: CancellationToken) {
    let mut step: u64 = 0;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(GENERATOR_INTERVAL) => {}
        }
        step += 1;
        let task = step.div_ceil(4);
        let sql = match step % 4 {
            1 => format!(
                "insert into tasks (id, status, tags) values ({task}, 'queued', '{{demo,build}}');
                 insert into audit_log (actor, action, detail) values ('scheduler', 'queue', '{{\"task\": {task}}}');"
            ),
            2 => format!(
                "begin;
                 update tasks set status = 'running', progress = 0.1, payload = '{{\"step\": \"checkout\"}}' where id = {task};
                 insert into environments (id, name, status, allocated_to) values ({task}, 'env-{task}', 'active', {task})
                   on conflict (id) do update set status = 'active', allocated_to = {task};
                 commit;"
            ),
            3 => format!("update tasks set progress = 0.6, payload = '{{\"step\": \"build\"}}' where id = {task};"),
            _ => format!(
                "begin;
                 update tasks set status = 'succeeded', progress = 1 where id = {task};
                 update environments set status = 'released', allocated_to = null where id = {task};
                 insert into deployments (environment_id, version, status, finished_at) values ({task}, 'v{task}', 'succeeded', now());
                 commit;"
            ),
        };
        let pg = Arc::clone(&pg);
        let result = tokio::task::spawn_blocking(move || pg.psql("platform", &sql)).await;
        if let Ok(Err(error)) = result {
            tracing::warn!(%error, "demo generator write failed");
        }
    }
}

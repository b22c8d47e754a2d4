//! The one-shot subcommands `check` and `setup`: reports on standard output.

use std::process::ExitCode;

use crate::app::{find_tenant, AppError};
use crate::config::{Config, TenantConfig};
use crate::source::{self, check_tenant, SourceError};

fn selected<'a>(
    config: &'a Config,
    tenant: Option<&str>,
) -> Result<Vec<&'a TenantConfig>, AppError> {
    match tenant {
        Some(id) => Ok(vec![find_tenant(config, id)?]),
        None if config.tenants.is_empty() => Err(AppError::NoTenants),
        None => Ok(config.tenants.iter().collect()),
    }
}

/// `walcast check`: prints a report per tenant; exit 1 when anything blocks.
pub async fn check(config: &Config, tenant: Option<&str>) -> Result<ExitCode, AppError> {
    let tenants = selected(config, tenant)?;
    // Tenants are checked concurrently: one unreachable server does not
    // delay the others' reports.
    let handles: Vec<_> = tenants
        .iter()
        .map(|t| {
            let tenant = (*t).clone();
            tokio::spawn(async move { check_tenant(&tenant).await })
        })
        .collect();
    let mut reports = Vec::with_capacity(handles.len());
    for handle in handles {
        reports.push(handle.await.expect("check task panicked"));
    }
    let mut blocked = 0;
    for report in &reports {
        print!("{report}");
        if report.blocks() {
            blocked += 1;
        }
    }
    if blocked == 0 {
        println!("all {} tenant(s) ready", reports.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{blocked} of {} tenant(s) cannot stream until the FAIL lines are fixed",
            reports.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// `walcast setup`: creates what is missing (or prints it with `--dry-run`).
pub async fn setup(
    config: &Config,
    tenant: Option<&str>,
    dry_run: bool,
) -> Result<ExitCode, AppError> {
    let tenants = selected(config, tenant)?;
    // Every tenant is tried: one that fails (down, missing grant) does not
    // keep the others from being set up.
    let mut failed = Vec::new();
    for tenant in &tenants {
        println!("-- tenant {} ({})", tenant.id, tenant.pg);
        if report(setup_one(tenant, dry_run).await) > 0 {
            println!("-- FAILED (the reason is on standard error)");
            failed.push(tenant.id.to_string());
        }
    }
    if failed.is_empty() && dry_run {
        println!("-- dry run: nothing was changed");
    } else if failed.is_empty() {
        println!("-- all {} tenant(s) set up", tenants.len());
    } else {
        println!(
            "-- {} of {} tenant(s) failed: {}",
            failed.len(),
            tenants.len(),
            failed.join(", ")
        );
    }
    Ok(exit_code(failed.len()))
}

/// Prints a tenant's failure (the whole chain, one line); 1 if it failed.
fn report(result: Result<(), SourceError>) -> usize {
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("walcast: {}", crate::tenant::error_chain(&err));
            1
        }
    }
}

fn exit_code(failed: usize) -> ExitCode {
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn setup_one(tenant: &TenantConfig, dry_run: bool) -> Result<(), SourceError> {
    let client = source::connect(tenant, "walcast setup").await?;
    let actions = source::setup_sql(&client, tenant).await?;
    if actions.is_empty() {
        println!(
            "-- nothing to do: publication {} and slot {} exist",
            tenant.publication, tenant.slot
        );
        return Ok(());
    }
    for action in &actions {
        println!("-- {}", action.why);
        println!("{}", action.sql);
    }
    if dry_run {
        return Ok(());
    }
    source::ensure_publication(&client, tenant).await?;
    source::ensure_slot(&client, tenant).await?;
    println!("-- done");
    Ok(())
}

/// Why `walcast resync` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error(
        "resync needs a [redis] section in the config (there is no mirror to rebuild without it)"
    )]
    NoRedis,
    #[error("cannot reach redis")]
    Redis(#[source] crate::sink::SinkError),
    #[error(transparent)]
    Pipeline(#[from] crate::tenant::PipelineError),
}

/// `walcast resync --tenant ID`.
pub async fn resync(config: &Config, tenant: &str) -> Result<ExitCode, ResyncError> {
    let tenant = find_tenant(config, tenant)?;
    let redis_config = config.redis.as_ref().ok_or(ResyncError::NoRedis)?;
    let conn = crate::sink::redis::connect(redis_config)
        .await
        .map_err(ResyncError::Redis)?;
    let mirror = crate::sink::RedisSink::new(tenant, redis_config, conn);
    if crate::tenant::resync(tenant, &mirror).await? {
        println!("tenant {}: mirror rebuilt from a new snapshot", tenant.id);
    } else {
        println!(
            "tenant {}: slot {} is in use (walcast run?): it was told to re-snapshot and does so within a few seconds; its log shows the progress",
            tenant.id, tenant.slot
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `walcast slots [--tenant ID] [--drop [--yes]]`.
pub async fn slots(
    config: &Config,
    tenant: Option<&str>,
    drop: bool,
    yes: bool,
) -> Result<ExitCode, AppError> {
    let mut failed = 0;
    for tenant in selected(config, tenant)? {
        failed += report(slots_one(tenant, drop, yes).await);
    }
    Ok(exit_code(failed))
}

async fn slots_one(tenant: &TenantConfig, drop: bool, yes: bool) -> Result<(), SourceError> {
    let client = source::connect(tenant, "walcast slots").await?;
    let slots = source::slot_infos(&client, tenant).await?;
    println!("tenant {} ({})", tenant.id, tenant.pg);
    if slots.is_empty() {
        println!("  no slot (walcast setup or run creates {})", tenant.slot);
    } else {
        println!(
            "  {:<40} {:<6} {:<10} {:>12} {:>12}",
            "slot", "active", "wal_status", "lag", "retained"
        );
        for slot in &slots {
            let size = |b: Option<i64>| b.map(source::human_bytes).unwrap_or_else(|| "-".into());
            println!(
                "  {:<40} {:<6} {:<10} {:>12} {:>12}{}",
                slot.name,
                if slot.active { "yes" } else { "no" },
                slot.wal_status.as_deref().unwrap_or("-"),
                size(slot.lag_bytes),
                size(slot.retained_bytes),
                if slot.temporary {
                    "  (temporary, walcast tail)"
                } else {
                    ""
                }
            );
            if slot.is_lost() {
                println!("    LOST: the server removed WAL this slot needed; changes were lost. Drop it (--drop) or run walcast resync.");
            }
        }
    }
    if !drop {
        return Ok(());
    }
    let Some(own) = slots.iter().find(|s| s.name == tenant.slot) else {
        println!("  nothing to drop: slot {} does not exist", tenant.slot);
        return Ok(());
    };
    if own.active {
        return Err(SourceError::Setup {
            tenant: tenant.id.clone(),
            problem: format!("slot {} is in use by a session", tenant.slot),
            fix: "stop the walcast (or tail) that reads it, then drop it".into(),
        });
    }
    if !yes
        && !confirm(
            &format!(
                "drop slot {} of tenant {}? type the slot name to confirm: ",
                tenant.slot, tenant.id
            ),
            &tenant.slot,
        )
    {
        return Err(SourceError::Setup {
            tenant: tenant.id.clone(),
            problem: "not confirmed; nothing was dropped".into(),
            fix: "type the slot name at the prompt, or pass --yes".into(),
        });
    }
    source::drop_slot(&client, tenant).await?;
    println!("  dropped slot {}", tenant.slot);
    Ok(())
}

/// Asks on the terminal; false without an answer (no terminal, EOF).
fn confirm(question: &str, expected: &str) -> bool {
    use std::io::Write;
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    match std::io::stdin().read_line(&mut answer) {
        Ok(n) if n > 0 => answer.trim() == expected,
        _ => false,
    }
}

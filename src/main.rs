//! The `walcast` binary: parse arguments, load config, run, print any error
//! chain once, exit non-zero on failure.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use walcast::cli::{Cli, Command, LogFormat};
use walcast::{app, commands, config};

// mimalloc instead of glibc's malloc: walcast allocates about ten small
// blocks per change on one thread and frees them on another (the Redis
// writer), which glibc's arenas handle slowly. Built without transparent
// huge pages (Cargo.toml): memory at start and per connection then stays
// close to glibc's (docs/benchmarks.md, seventh session).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("walcast: could not start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match run(cli).await {
            Ok(code) => code,
            Err(err) => {
                eprintln!("walcast: {}", walcast::tenant::error_chain(&*err));
                ExitCode::FAILURE
            }
        }
    })
}

async fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let root = CancellationToken::new();
    if let Command::Demo { port } = cli.command {
        walcast::demo::demo(port, root).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = config::load(&cli.config)?;
    match cli.command {
        Command::Demo { .. } => unreachable!("handled above"),
        Command::Run => app::run(config, root).await?,
        Command::Tail {
            tenant,
            tables,
            temporary_slot,
        } => app::tail(config, &tenant, &tables, temporary_slot, root).await?,
        Command::Slots { tenant, drop, yes } => {
            return Ok(commands::slots(&config, tenant.as_deref(), drop, yes).await?)
        }
        Command::Resync { tenant } => return Ok(commands::resync(&config, &tenant).await?),
        Command::Check { tenant } => return Ok(commands::check(&config, tenant.as_deref()).await?),
        Command::Setup { dry_run, tenant } => {
            return Ok(commands::setup(&config, tenant.as_deref(), dry_run).await?)
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Log level when `WALCAST_LOG` is not set. The replication library's own
/// error line is off: walcast reports the same error with its fix.
// warp logs every client that goes away mid-response (a closed browser tab,
// a reset) as "ERROR server connection error"; with many clients that floods
// the log with what is normal. `WALCAST_LOG=warp::server=debug` shows them.
const DEFAULT_LOG_FILTER: &str =
    "info,pgwire_replication::client::tokio_client=off,warp::server=off";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WALCAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

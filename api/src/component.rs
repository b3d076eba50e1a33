//! The scaffolding every component binary shares: parse flags, start logging, build the Tokio
//! runtime, turn SIGINT/SIGTERM into a cancelled [`CancellationToken`], and run the component.
//!
//! A component's `main.rs` is one call to [`main`]; `miniorch` calls the same `run` functions
//! through [`run_blocking`] so each component behaves the same standalone or under the distro.

use std::future::Future;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Runs a component as the whole process: `main.rs` is `component::main(miniorch_x::run)`.
pub fn main<C, F, Fut>(run: F) -> anyhow::Result<()>
where
    C: Parser,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = C::parse();
    run_blocking(config, run)
}

/// Starts logging and a runtime, then runs `run(config, shutdown)` until it returns.
pub fn run_blocking<C, F, Fut>(config: C, run: F) -> anyhow::Result<()>
where
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        run(config, shutdown).await
    })
}

/// Logs go to stderr; `RUST_LOG` filters them (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second call (tests that start several components in one process) is harmless.
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop the process with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received, shutting down");
    shutdown.cancel();
}

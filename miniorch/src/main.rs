//! `miniorch`: the distro. `miniorch up/down/status` manage a cluster on this machine; every
//! component is linked in and runs as its own process (`miniorch apiserver ...`), so the same
//! binary is the whole cluster.

mod cluster;
mod down;
mod images;
mod signal;
mod status;
mod up;

use clap::{Parser, Subcommand};
use miniorch_api::component::run_blocking;

#[derive(Debug, Parser)]
#[command(
    name = "miniorch",
    version,
    about = "A small Kubernetes: bring a cluster up on this machine with `miniorch up`"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a cluster on this machine (store, apiserver, scheduler, controller, agent).
    Up(up::Args),
    /// Stop the cluster and remove every container it made.
    Down(down::Args),
    /// Show each component's state, the node and the leaders.
    Status(status::Args),
    /// Run the store (etcd v3 API over Raft).
    Store(miniorch_store::Config),
    /// Run the API server.
    Apiserver(miniorch_apiserver::Config),
    /// Run the scheduler.
    Scheduler(miniorch_scheduler::Config),
    /// Run the controller-manager.
    Controller(miniorch_controller::Config),
    /// Run the node agent.
    Agent(miniorch_agent::Config),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(a) => cli_runtime(up::run(a)),
        Command::Down(a) => cli_runtime(down::run(a)),
        Command::Status(a) => cli_runtime(status::run(a)),
        Command::Store(c) => run_blocking(c, miniorch_store::run),
        Command::Apiserver(c) => run_blocking(c, miniorch_apiserver::run),
        Command::Scheduler(c) => run_blocking(c, miniorch_scheduler::run),
        Command::Controller(c) => run_blocking(c, miniorch_controller::run),
        Command::Agent(c) => run_blocking(c, miniorch_agent::run),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The user-facing commands run on a small runtime without log output.
fn cli_runtime<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

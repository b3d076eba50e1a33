//! mctl: the miniorch command line. kubectl's everyday verbs with kubectl's output (`get`,
//! `apply -f`, `delete`, `describe`), reading the kubeconfig that `miniorch up` wrote. Each
//! subcommand is one file with one `run` function.

pub mod api;
pub mod apply;
pub mod delete;
pub mod describe;
pub mod get;
pub mod output;
pub mod resources;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Command-line flags of `mctl`.
#[derive(Debug, Parser)]
#[command(
    name = "mctl",
    version,
    about = "Talk to a miniorch (or any Kubernetes) cluster",
    after_help = "Start a cluster with `miniorch up`; mctl then finds its kubeconfig on its own."
)]
pub struct Cli {
    /// Kubeconfig file (default: $KUBECONFIG, then the one `miniorch up` wrote, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace to work in (default: the kubeconfig context's, else "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List or show resources: `mctl get pods`, `mctl get nodes -o wide`, `mctl get pod web -o yaml`.
    Get(get::Args),
    /// Create or update resources from a file: `mctl apply -f pod.yaml`.
    Apply(apply::Args),
    /// Delete resources: `mctl delete pod web`.
    Delete(delete::Args),
    /// Show details and recent events: `mctl describe pod web`.
    Describe(describe::Args),
}

/// Runs one mctl command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = api::Ctx::connect(cli.kubeconfig.as_deref(), cli.namespace.clone()).await?;
    match cli.command {
        Command::Get(args) => get::run(&ctx, args).await,
        Command::Apply(args) => apply::run(&ctx, args).await,
        Command::Delete(args) => delete::run(&ctx, args).await,
        Command::Describe(args) => describe::run(&ctx, args).await,
    }
}

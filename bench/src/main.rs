//! Benchmarks, run by hand (`cargo run --release -p bench -- <suite>`), never as timed tests.
//! Each suite measures miniorch side by side with the reference it is compared to, in one run,
//! and prints a Markdown table for BENCHMARKS.md.

mod api;
mod pods;
mod stats;
mod store;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "bench", about = "miniorch benchmarks")]
struct Cli {
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Debug, Subcommand)]
enum Suite {
    /// Pod create → Running latency, beside raw `docker run -d` of the same image.
    Pods(pods::Args),
    /// The apiserver over miniorch-store and over etcd: creates, LIST, watch fan-out, memory.
    Api(api::Args),
    /// miniorch-store beside etcd: puts, gets and txn-CAS at 64/256 clients, failover, memory.
    Store(store::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.suite {
            Suite::Pods(a) => pods::run(a).await,
            Suite::Api(a) => api::run(a).await,
            Suite::Store(a) => store::run(a).await,
        }
    })
}

/// A binary built beside this one (`target/release/<name>`).
fn sibling(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("the bench binary has no directory"))?;
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build it with `cargo build --release --workspace`",
        path.display()
    );
    Ok(path)
}

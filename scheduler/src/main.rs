//! `miniorch-scheduler`: the scheduler as its own process.

fn main() -> anyhow::Result<()> {
    miniorch_api::component::main(miniorch_scheduler::run)
}

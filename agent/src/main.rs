//! `miniorch-agent`: the node agent as a process of its own.

fn main() -> anyhow::Result<()> {
    miniorch_api::component::main(miniorch_agent::run)
}

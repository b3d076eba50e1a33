//! `miniorch-proxy`: the service proxy as a process of its own.

fn main() -> anyhow::Result<()> {
    miniorch_api::component::main(miniorch_proxy::run)
}

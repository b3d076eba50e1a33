//! `miniorch-dns`: the cluster DNS as a process of its own.

fn main() -> anyhow::Result<()> {
    miniorch_api::component::main(miniorch_dns::run)
}

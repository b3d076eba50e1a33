//! The `miniorch-store` binary: one store member.

fn main() -> anyhow::Result<()> {
    miniorch_api::component::main(miniorch_store::run)
}

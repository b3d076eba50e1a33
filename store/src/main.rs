//! The `miniorch-store` binary: one store member.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    miniorch_api::component::main(miniorch_store::run)
}

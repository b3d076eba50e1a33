//! `miniorch-controller`: the controller-manager as its own process.

fn main() -> anyhow::Result<()> {
    miniorch_api::component::main(miniorch_controller::run)
}

fn main() -> anyhow::Result<()> {
    miniorch_api::component::main(miniorch_apiserver::run)
}

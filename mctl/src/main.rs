use clap::Parser;

fn main() {
    let cli = mctl::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(mctl::run(cli)) {
        // Server errors print as kubectl prints them; everything else as `error: ...`.
        if e.downcast_ref::<mctl::api::Reported>().is_none() {
            eprintln!("{}", mctl::api::ServerError::describe(&e));
        }
        std::process::exit(1);
    }
}

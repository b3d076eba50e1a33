//! Builds the static binaries of miniorch's own images (`miniorch/pause`, `miniorch/demo`) and
//! leaves them in `OUT_DIR`, where `src/images.rs` embeds them: `miniorch up` loads the images
//! into Docker without a registry and builds nothing at run time.

#[path = "../images/build_static.rs"]
mod build_static;

use std::path::{Path, PathBuf};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = env_path("CARGO_MANIFEST_DIR")?;
    let workspace = manifest_dir
        .parent()
        .ok_or("the miniorch crate is not inside a workspace")?;
    let images = workspace.join("images");
    for watched in [
        images.join("src"),
        images.join("Cargo.toml"),
        images.join("build_static.rs"),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    println!(
        "cargo:rerun-if-env-changed={}",
        build_static::TARGET_DIR_ENV
    );

    let target = std::env::var("TARGET").map_err(|_| "cargo did not set TARGET")?;
    let cargo = env_path("CARGO")?;
    let rustc = std::env::var_os("RUSTC").map(PathBuf::from);
    let target_dir = build_static::target_dir(workspace);
    let binaries = build_static::StaticBuild {
        workspace,
        target_dir: &target_dir,
        target: &target,
        cargo: &cargo,
        rustc: rustc.as_deref(),
    }
    .run()?;

    // Copied, so that another build refreshing the shared directory cannot change the bytes
    // while this crate compiles.
    let out_dir = env_path("OUT_DIR")?;
    for (name, path) in build_static::BINARIES.iter().zip(&binaries) {
        let dest = out_dir.join(name);
        std::fs::copy(path, &dest)
            .map_err(|e| format!("cannot copy {} to {}: {e}", path.display(), dest.display()))?;
    }
    Ok(())
}

fn env_path(name: &str) -> Result<PathBuf, String> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .filter(|p| p != Path::new(""))
        .ok_or_else(|| format!("cargo did not set {name}"))
}

//! miniorch's own images, `miniorch/pause` and `miniorch/demo`: their static binaries are built
//! by `build.rs` and embedded here, so `miniorch up` loads them into Docker without any
//! registry and builds nothing at run time.

use anyhow::Context;
use miniorch_agent::images::{LocalImage, ensure_images};

/// The sandbox image every pod starts with.
pub const PAUSE_IMAGE: &str = miniorch_agent::images::PAUSE_IMAGE;
/// The demo workload image (`demo [serve]`, `demo exit CODE`, `demo sleep SECS`).
pub const DEMO_IMAGE: &str = miniorch_agent::images::DEMO_IMAGE;

static PAUSE_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause"));
static DEMO_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/demo"));

/// The images, with their embedded binaries.
pub fn images() -> [LocalImage<'static>; 2] {
    [
        LocalImage {
            name: PAUSE_IMAGE,
            binary_name: "pause",
            binary: PAUSE_BINARY,
            default_args: &[],
        },
        LocalImage {
            name: DEMO_IMAGE,
            binary_name: "demo",
            binary: DEMO_BINARY,
            default_args: &["serve"],
        },
    ]
}

/// Builds and loads `miniorch/pause:latest` and `miniorch/demo:latest` into Docker when they
/// are missing or hold other binaries (always, if `force`); returns the names it loaded.
pub async fn ensure(docker: &bollard::Docker, force: bool) -> anyhow::Result<Vec<String>> {
    ensure_images(docker, &images(), force)
        .await
        .context("cannot load miniorch's images into Docker")
}

//! Where miniorch keeps its files when the user does not say.

use std::path::PathBuf;

/// `$XDG_DATA_HOME/miniorch` (usually `~/.local/share/miniorch`): the default `--data-dir` of
/// `miniorch up`, and so where `mctl` finds the kubeconfig it wrote.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("miniorch")
}

/// The kubeconfig `miniorch up` writes into a data directory.
pub fn kubeconfig_in(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("kubeconfig")
}

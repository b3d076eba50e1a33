//! Building a Kubernetes client: components get `--kubeconfig` or `--server`; the CLI looks for
//! a kubeconfig the way kubectl does, then falls back to the one `miniorch up` wrote.

use std::path::{Path, PathBuf};

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// How a component reaches the apiserver: flags shared by every component that is a client.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Apiserver URL, e.g. http://127.0.0.1:6443 (ignored when --kubeconfig is given).
    #[arg(long, default_value = "http://127.0.0.1:6443")]
    pub server: String,
    /// Kubeconfig file to read the apiserver address and credentials from.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

impl ClientArgs {
    /// A client for these flags.
    pub async fn client(&self, user_agent: &str) -> anyhow::Result<kube::Client> {
        let config = match &self.kubeconfig {
            Some(path) => from_kubeconfig_file(path).await?,
            None => {
                let url: http::Uri = self
                    .server
                    .parse()
                    .with_context(|| format!("--server {:?} is not a URL", self.server))?;
                kube::Config::new(url)
            }
        };
        build(config, user_agent)
    }
}

/// Finds the kubeconfig as `mctl` does: the flag, then `$KUBECONFIG` (first existing file of a
/// colon-separated list), then `<default data dir>/kubeconfig`, then `~/.kube/config`.
pub fn find_kubeconfig(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = flag {
        return Ok(path.to_path_buf());
    }
    if let Some(list) = std::env::var_os("KUBECONFIG")
        && let Some(path) = std::env::split_paths(&list).find(|p| p.is_file())
    {
        return Ok(path);
    }
    let ours = crate::paths::kubeconfig_in(&crate::paths::default_data_dir());
    if ours.is_file() {
        return Ok(ours);
    }
    if let Some(home) = dirs::home_dir() {
        let kube = home.join(".kube").join("config");
        if kube.is_file() {
            return Ok(kube);
        }
    }
    anyhow::bail!(
        "no kubeconfig found: start a cluster with `miniorch up`, or pass --kubeconfig FILE or set KUBECONFIG"
    )
}

/// Reads a kubeconfig file into a client configuration (its current context).
pub async fn from_kubeconfig_file(path: &Path) -> anyhow::Result<kube::Config> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("kubeconfig {} is not usable", path.display()))
}

/// A client from a configuration, identifying itself with `user_agent`.
pub fn build(mut config: kube::Config, user_agent: &str) -> anyhow::Result<kube::Client> {
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(user_agent).context("user agent")?,
    ));
    kube::Client::try_from(config).context("cannot build a Kubernetes client")
}

/// What went wrong, in one line: the server's Status message when the server answered
/// (kube's own rendering of such errors dumps the whole Status).
pub fn error_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.reason),
        other => other.to_string(),
    }
}

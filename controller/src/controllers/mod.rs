//! The controllers of the controller-manager, one file each, and their registry: a name (as
//! upstream's `--controllers` names, with the old short aliases), whether it runs by default,
//! and how to start it. `--controllers` picks from this list as upstream does.

pub mod garbage_collector;
pub mod namespace;
pub mod node_lifecycle;
pub mod podgc;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::informers::Informers;
use crate::metrics::Metrics;

/// Why a controller failed to start or to sync.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// An apiserver call failed.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// The API's discovery failed.
    #[error("discovery failed: {0}")]
    Discovery(String),
    /// Some content could not be deleted.
    #[error("failed to delete content: {0}")]
    Content(String),
    /// A controller subscribed to an informer that was already running.
    #[error("an informer was started before all controllers subscribed to it")]
    InformerStarted,
}

/// Settings the controllers read (from the controller-manager's flags).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The node-lifecycle timings.
    pub node_lifecycle: node_lifecycle::Settings,
    /// `--terminated-pod-gc-threshold` (0 or less disables that part of podgc).
    pub terminated_pod_gc_threshold: i64,
}

/// What a controller gets to start with.
pub struct ControllerContext<'a> {
    /// The client.
    pub client: kube::Client,
    /// The shared informers (subscribe before they start).
    pub informers: &'a mut Informers,
    /// The settings.
    pub settings: Settings,
    /// The metrics.
    pub metrics: Metrics,
    /// This instance's identity (the events' reporting instance).
    pub identity: String,
}

/// Starts a controller: sets up its informers and returns the future that runs it until the
/// token is cancelled.
pub type Start = fn(
    &mut ControllerContext<'_>,
    CancellationToken,
) -> Result<BoxFuture<'static, ()>, ControllerError>;

/// A registry entry.
#[derive(Clone, Copy)]
pub struct Descriptor {
    /// Upstream's name.
    pub name: &'static str,
    /// Older names that also select it.
    pub aliases: &'static [&'static str],
    /// Whether `*` includes it.
    pub enabled_by_default: bool,
    /// How to start it.
    pub start: Start,
}

impl std::fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every controller this controller-manager knows.
pub const ALL: &[Descriptor] = &[
    garbage_collector::DESCRIPTOR,
    namespace::DESCRIPTOR,
    node_lifecycle::DESCRIPTOR,
    podgc::DESCRIPTOR,
];

fn find(name: &str) -> Option<&'static Descriptor> {
    ALL.iter()
        .find(|d| d.name == name || d.aliases.contains(&name))
}

/// Upstream's `--controllers` rules: `*` turns on the default ones, `foo` turns on foo,
/// `-foo` turns off foo (an explicit name wins over `*`). Unknown names are an error.
pub fn select(flags: &[String]) -> Result<Vec<&'static Descriptor>, String> {
    let mut star = false;
    let mut on: Vec<&str> = Vec::new();
    let mut off: Vec<&str> = Vec::new();
    for flag in flags.iter().map(|f| f.trim()).filter(|f| !f.is_empty()) {
        if flag == "*" {
            star = true;
            continue;
        }
        let (name, list) = match flag.strip_prefix('-') {
            Some(n) => (n, &mut off),
            None => (flag, &mut on),
        };
        let d = find(name).ok_or_else(|| {
            let known: Vec<&str> = ALL.iter().map(|d| d.name).collect();
            format!(
                "{name:?} is not in the list of known controllers: {}",
                known.join(", ")
            )
        })?;
        list.push(d.name);
    }
    Ok(ALL
        .iter()
        .filter(|d| {
            if off.contains(&d.name) {
                false
            } else {
                on.contains(&d.name) || (star && d.enabled_by_default)
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(flags: &[&str]) -> Result<Vec<&'static str>, String> {
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        select(&flags).map(|v| v.into_iter().map(|d| d.name).collect())
    }

    #[test]
    fn controllers_flag_as_upstream() {
        let all = vec![
            "garbage-collector-controller",
            "namespace-controller",
            "node-lifecycle-controller",
            "pod-garbage-collector-controller",
        ];
        assert_eq!(names(&["*"]).unwrap(), all);
        assert_eq!(names(&["*", "-podgc"]).unwrap(), all[..3].to_vec());
        assert_eq!(
            names(&["podgc"]).unwrap(),
            vec!["pod-garbage-collector-controller"]
        );
        assert_eq!(
            names(&["namespace-controller", "nodelifecycle"]).unwrap(),
            all[1..3].to_vec()
        );
        assert_eq!(
            names(&["*", "-garbagecollector"]).unwrap(),
            all[1..].to_vec()
        );
        assert_eq!(names(&[]).unwrap(), Vec::<&str>::new());
        let err = names(&["*", "replicaset"]).unwrap_err();
        assert!(
            err.contains("\"replicaset\" is not in the list of known controllers"),
            "{err}"
        );
    }
}

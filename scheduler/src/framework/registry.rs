//! The plugin registry (name → constructor) and profiles: which registered plugins run at which
//! extension point, with which score weight. New plugins register here; a profile names them.

use std::collections::BTreeMap;

use super::{FilterPlugin, Framework, ScorePlugin};
use crate::plugins::node_name::NodeName;
use crate::plugins::node_ready::NodeReady;
use crate::plugins::node_resources_fit::{NodeResourcesFit, ScoringStrategy};
use crate::plugins::node_unschedulable::NodeUnschedulable;
use crate::plugins::taint_toleration::TaintToleration;

/// The scheduler name pods get when they name none.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// A constructed plugin: the extension points it implements.
#[derive(Default)]
pub struct Plugin {
    /// Its Filter implementation, if any.
    pub filter: Option<Box<dyn FilterPlugin>>,
    /// Its Score implementation, if any.
    pub score: Option<Box<dyn ScorePlugin>>,
}

/// Settings plugins are built with (upstream's per-plugin args).
#[derive(Debug, Clone)]
pub struct PluginArgs {
    /// NodeResourcesFit's scoring strategy.
    pub fit_strategy: ScoringStrategy,
}

impl Default for PluginArgs {
    fn default() -> Self {
        PluginArgs {
            fit_strategy: ScoringStrategy::LeastAllocated,
        }
    }
}

/// Builds a plugin from its args.
pub type Factory = fn(&PluginArgs) -> Plugin;

/// Why a profile could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The profile names a plugin nobody registered.
    #[error("plugin {0:?} is not registered")]
    Unknown(String),
    /// The plugin exists but does not implement that extension point.
    #[error("plugin {name:?} does not implement the {point} extension point")]
    WrongExtensionPoint { name: String, point: &'static str },
    /// Two plugins were registered under one name.
    #[error("plugin {0:?} is registered twice")]
    Duplicate(String),
    /// A score weight must be positive.
    #[error("score plugin {0:?} needs a positive weight")]
    BadWeight(String),
}

/// Name → constructor.
pub struct Registry {
    factories: BTreeMap<&'static str, Factory>,
}

impl Registry {
    /// The in-tree plugins.
    pub fn in_tree() -> Registry {
        let mut r = Registry {
            factories: BTreeMap::new(),
        };
        let entries: [(&'static str, Factory); 5] = [
            (NodeName::NAME, |_| Plugin {
                filter: Some(Box::new(NodeName)),
                ..Default::default()
            }),
            (NodeUnschedulable::NAME, |_| Plugin {
                filter: Some(Box::new(NodeUnschedulable)),
                ..Default::default()
            }),
            (NodeReady::NAME, |_| Plugin {
                filter: Some(Box::new(NodeReady)),
                ..Default::default()
            }),
            (TaintToleration::NAME, |_| Plugin {
                filter: Some(Box::new(TaintToleration)),
                score: Some(Box::new(TaintToleration)),
            }),
            (NodeResourcesFit::NAME, |args| Plugin {
                filter: Some(Box::new(NodeResourcesFit {
                    strategy: args.fit_strategy,
                })),
                score: Some(Box::new(NodeResourcesFit {
                    strategy: args.fit_strategy,
                })),
            }),
        ];
        for (name, factory) in entries {
            r.factories.insert(name, factory);
        }
        r
    }

    /// Adds an out-of-tree plugin.
    pub fn register(&mut self, name: &'static str, factory: Factory) -> Result<(), RegistryError> {
        if self.factories.contains_key(name) {
            return Err(RegistryError::Duplicate(name.to_string()));
        }
        self.factories.insert(name, factory);
        Ok(())
    }

    /// The framework for `profile`.
    pub fn build(&self, profile: &Profile) -> Result<Framework, RegistryError> {
        let make = |name: &str| {
            self.factories
                .get(name)
                .map(|f| f(&profile.args))
                .ok_or_else(|| RegistryError::Unknown(name.to_string()))
        };
        let mut filters = Vec::new();
        for name in &profile.filters {
            let filter = make(name)?
                .filter
                .ok_or(RegistryError::WrongExtensionPoint {
                    name: name.clone(),
                    point: "Filter",
                })?;
            filters.push(filter);
        }
        let mut scores = Vec::new();
        for (name, weight) in &profile.scores {
            if *weight <= 0 {
                return Err(RegistryError::BadWeight(name.clone()));
            }
            let score = make(name)?
                .score
                .ok_or(RegistryError::WrongExtensionPoint {
                    name: name.clone(),
                    point: "Score",
                })?;
            scores.push((score, *weight));
        }
        Ok(Framework::new(
            filters,
            scores,
            profile.percentage_of_nodes_to_score,
        ))
    }
}

/// Which plugins one scheduler name runs (upstream's `KubeSchedulerProfile`).
#[derive(Debug, Clone)]
pub struct Profile {
    /// Pods with this `spec.schedulerName` use this profile.
    pub scheduler_name: String,
    /// Filter plugins, in order.
    pub filters: Vec<String>,
    /// Score plugins with their weights.
    pub scores: Vec<(String, i64)>,
    /// Plugin settings.
    pub args: PluginArgs,
    /// Percentage of nodes to find feasible before scoring (0: adaptive, as upstream).
    pub percentage_of_nodes_to_score: u32,
}

impl Default for Profile {
    /// The default profile, in upstream's order and weights.
    fn default() -> Self {
        Profile {
            scheduler_name: DEFAULT_SCHEDULER_NAME.to_string(),
            filters: [
                NodeUnschedulable::NAME,
                NodeName::NAME,
                TaintToleration::NAME,
                NodeReady::NAME,
                NodeResourcesFit::NAME,
            ]
            .map(String::from)
            .to_vec(),
            scores: vec![
                (TaintToleration::NAME.to_string(), 3),
                (NodeResourcesFit::NAME.to_string(), 1),
            ],
            args: PluginArgs::default(),
            percentage_of_nodes_to_score: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_builds_in_order() {
        let fw = Registry::in_tree().build(&Profile::default()).unwrap();
        assert_eq!(
            fw.filter_names(),
            [
                "NodeUnschedulable",
                "NodeName",
                "TaintToleration",
                "NodeReady",
                "NodeResourcesFit"
            ]
        );
        assert_eq!(
            fw.score_names(),
            [("TaintToleration", 3), ("NodeResourcesFit", 1)]
        );
    }

    #[test]
    fn bad_profiles_are_clear_errors() {
        let reg = Registry::in_tree();
        let mut p = Profile::default();
        p.filters.push("NodePorts".into());
        assert_eq!(
            reg.build(&p).err(),
            Some(RegistryError::Unknown("NodePorts".into()))
        );
        let mut p = Profile::default();
        p.scores.push(("NodeName".into(), 1));
        assert!(matches!(
            reg.build(&p),
            Err(RegistryError::WrongExtensionPoint { .. })
        ));
        let mut p = Profile::default();
        p.scores[0].1 = 0;
        assert!(matches!(reg.build(&p), Err(RegistryError::BadWeight(_))));
        let mut reg = Registry::in_tree();
        assert!(reg.register("NodeName", |_| Plugin::default()).is_err());
    }
}

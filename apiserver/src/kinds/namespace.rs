//! Namespaces: `Active` until deleted, then `Terminating` while the namespace controller empties
//! them; removed once `spec.finalizers` is empty (`/finalize`). The system namespaces stay.

use k8s_openapi::api::core::v1::{Namespace, NamespaceSpec, NamespaceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use crate::errors::{ApiError, ApiResult};
use crate::registry::{Column, DeleteDecision, Kind, Subresource};
use crate::table;

/// Namespaces the server creates at start and never lets go.
pub const SYSTEM: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Namespaces that may not be deleted (upstream's NamespaceLifecycle admission).
const IMMORTAL: &[&str] = &["default", "kube-system", "kube-public"];

impl Kind for Namespace {
    const NAMESPACED: bool = false;
    const SINGULAR: &'static str = "namespace";
    const NAME_IS_LABEL: bool = true;
    const SHORT_NAMES: &'static [&'static str] = &["ns"];
    const SUBRESOURCES: &'static [Subresource] = &[Subresource::Status, Subresource::Finalize];
    const FIELDS: &'static [&'static str] = &["status.phase"];

    fn field(&self, field: &str) -> Option<String> {
        match field {
            "status.phase" => self.status.as_ref().and_then(|s| s.phase.clone()),
            _ => None,
        }
    }

    fn prepare_for_create(&mut self) {
        self.status = Some(NamespaceStatus {
            phase: Some("Active".into()),
            conditions: None,
        });
        let spec = self.spec.get_or_insert_with(NamespaceSpec::default);
        let finalizers = spec.finalizers.get_or_insert_with(Vec::new);
        if !finalizers.iter().any(|f| f == "kubernetes") {
            finalizers.push("kubernetes".into());
        }
    }

    fn apply_defaults(&mut self) {
        // Upstream labels every namespace with its own name.
        if let Some(name) = self.metadata.name.clone() {
            self.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert("kubernetes.io/metadata.name".into(), name);
        }
    }

    fn prepare_for_update(&mut self, old: &Self) {
        self.status = old.status.clone();
        // Finalizers change only through /finalize.
        let finalizers = old.spec.as_ref().and_then(|s| s.finalizers.clone());
        self.spec
            .get_or_insert_with(NamespaceSpec::default)
            .finalizers = finalizers;
    }

    fn prepare_for_subresource_update(&mut self, old: &Self, sub: Subresource) {
        match sub {
            Subresource::Finalize => {
                let finalizers = self.spec.as_ref().and_then(|s| s.finalizers.clone());
                *self = old.clone();
                self.spec
                    .get_or_insert_with(NamespaceSpec::default)
                    .finalizers = finalizers;
            }
            _ => {
                let status = self.status.take();
                *self = Namespace {
                    status,
                    ..old.clone()
                };
            }
        }
    }

    fn on_delete(&mut self, _grace: Option<i64>, now: &Time) -> ApiResult<DeleteDecision> {
        let name = self.metadata.name.clone().unwrap_or_default();
        if IMMORTAL.contains(&name.as_str()) {
            return Err(ApiError::forbidden(format!(
                "namespaces {name:?} is forbidden: this namespace may not be deleted"
            )));
        }
        if self.ready_to_remove_now() {
            return Ok(DeleteDecision::Now);
        }
        if self.metadata.deletion_timestamp.is_none() {
            self.metadata.deletion_timestamp = Some(now.clone());
            self.metadata.deletion_grace_period_seconds = Some(0);
        }
        self.status
            .get_or_insert_with(NamespaceStatus::default)
            .phase = Some("Terminating".into());
        Ok(DeleteDecision::Graceful)
    }

    fn ready_to_remove(&self) -> bool {
        self.metadata.deletion_timestamp.is_some() && self.ready_to_remove_now()
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name_column(),
            Column::new("Status", "string", "The status of the namespace"),
            Column::age_column(),
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        vec![
            json!(self.metadata.name.clone().unwrap_or_default()),
            json!(
                self.status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default()
            ),
            json!(table::age(self.metadata.creation_timestamp.as_ref(), now)),
        ]
    }
}

trait NamespaceExt {
    fn ready_to_remove_now(&self) -> bool;
}

impl NamespaceExt for Namespace {
    /// No finalizer of either kind is left.
    fn ready_to_remove_now(&self) -> bool {
        self.spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_none_or(Vec::is_empty)
            && self.metadata.finalizers.as_ref().is_none_or(Vec::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let now = Time(jiff::Timestamp::now());
        let mut ns = Namespace::default();
        ns.metadata.name = Some("team".into());
        ns.prepare_for_create();
        assert_eq!(
            ns.spec.as_ref().unwrap().finalizers.as_deref(),
            Some(&["kubernetes".to_string()][..])
        );
        assert_eq!(ns.on_delete(None, &now).unwrap(), DeleteDecision::Graceful);
        assert_eq!(
            ns.status.as_ref().unwrap().phase.as_deref(),
            Some("Terminating")
        );
        assert!(!ns.ready_to_remove());
        let mut finalized = ns.clone();
        finalized.spec.as_mut().unwrap().finalizers = Some(vec![]);
        let mut updated = finalized.clone();
        updated.prepare_for_subresource_update(&ns, Subresource::Finalize);
        assert!(updated.ready_to_remove());
        let mut default = Namespace::default();
        default.metadata.name = Some("default".into());
        assert_eq!(default.on_delete(None, &now).unwrap_err().code, 403);
    }
}

//! Deployments (apps/v1): upstream's defaults (one replica, RollingUpdate 25%/25%, history 10,
//! progress deadline 600 s), validation, an immutable selector, `generation` counted on spec
//! and annotation changes, the `scale` and `status` subresources and the `kubectl get` columns.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStatus, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use crate::errors::FieldError;
use crate::kinds::podtemplate::{self as tpl, CONTAINERS_DOC, IMAGES_DOC};
use crate::registry::{Column, Kind, Subresource};
use crate::table;

impl Kind for Deployment {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "deployment";
    const SHORT_NAMES: &'static [&'static str] = &["deploy"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const SUBRESOURCES: &'static [Subresource] = &[Subresource::Scale, Subresource::Status];
    const TRACKS_GENERATION: bool = true;

    fn prepare_for_create(&mut self) {
        self.status = Some(DeploymentStatus::default());
    }

    fn apply_defaults(&mut self) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        default_spec(spec);
    }

    fn validate(&self) -> Vec<FieldError> {
        match &self.spec {
            None => vec![FieldError::required("spec", "")],
            Some(spec) => validate_spec(spec),
        }
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        if let (Some(new), Some(old)) = (&self.spec, &old.spec) {
            errs.extend(tpl::selector_immutable(
                "spec.selector",
                &new.selector,
                &old.selector,
            ));
        }
        errs
    }

    fn prepare_for_update(&mut self, old: &Self) {
        self.status = old.status.clone();
        // Upstream also counts annotation changes of the main resource: they are copied to
        // the ReplicaSets. (The controller's revision annotation comes through /status and
        // counts nothing.)
        if self.metadata.annotations != old.metadata.annotations {
            self.metadata.generation = Some(old.metadata.generation.unwrap_or(1) + 1);
        }
    }

    /// A status update may not change the spec or the labels; other metadata (the
    /// controller's revision annotation) may change, as upstream's status strategy.
    fn prepare_for_subresource_update(&mut self, old: &Self, sub: Subresource) {
        if sub == Subresource::Status {
            self.spec = old.spec.clone();
            self.metadata.labels = old.metadata.labels.clone();
        }
    }

    fn spec_changed(&self, old: &Self) -> bool {
        self.spec != old.spec
    }

    fn scale(&self) -> Option<(i32, i32, String)> {
        let spec = self.spec.as_ref()?;
        Some((
            spec.replicas.unwrap_or(1),
            self.status.as_ref().and_then(|s| s.replicas).unwrap_or(0),
            tpl::selector_string(Some(&spec.selector)),
        ))
    }

    fn set_replicas(&mut self, replicas: i32) {
        if let Some(spec) = self.spec.as_mut() {
            spec.replicas = Some(replicas);
        }
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name_column(),
            Column::new("Ready", "string", "Number of the pod with ready state"),
            Column::new(
                "Up-to-date",
                "string",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            Column::new(
                "Available",
                "string",
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            Column::age_column(),
            Column::new("Containers", "string", CONTAINERS_DOC).wide(),
            Column::new("Images", "string", IMAGES_DOC).wide(),
            Column::new(
                "Selector",
                "string",
                "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
            )
            .wide(),
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let spec = self.spec.as_ref();
        let status = self.status.clone().unwrap_or_default();
        let desired = spec.and_then(|s| s.replicas).unwrap_or(0);
        let (containers, images) =
            tpl::container_cells(spec.and_then(|s| s.template.spec.as_ref()));
        vec![
            json!(self.metadata.name.clone().unwrap_or_default()),
            json!(format!("{}/{desired}", status.ready_replicas.unwrap_or(0))),
            json!(status.updated_replicas.unwrap_or(0)),
            json!(status.available_replicas.unwrap_or(0)),
            json!(table::age(self.metadata.creation_timestamp.as_ref(), now)),
            json!(containers),
            json!(images),
            json!(tpl::selector_string(spec.map(|s| &s.selector))),
        ]
    }
}

fn default_spec(spec: &mut DeploymentSpec) {
    spec.replicas.get_or_insert(1);
    let strategy = spec
        .strategy
        .get_or_insert_with(DeploymentStrategy::default);
    let rolling = *strategy.type_.get_or_insert_with(|| "RollingUpdate".into()) == "RollingUpdate";
    if rolling {
        let ru = strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateDeployment::default);
        ru.max_unavailable
            .get_or_insert_with(|| IntOrString::String("25%".into()));
        ru.max_surge
            .get_or_insert_with(|| IntOrString::String("25%".into()));
    }
    spec.revision_history_limit.get_or_insert(10);
    spec.progress_deadline_seconds.get_or_insert(600);
    tpl::default_template(&mut spec.template);
}

/// Upstream's `ValidateDeploymentSpec` for apps/v1.
fn validate_spec(spec: &DeploymentSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    tpl::non_negative("spec.replicas", spec.replicas.map(i64::from), &mut errs);
    errs.extend(tpl::validate_selector(
        "spec.selector",
        &spec.selector,
        "spec.template",
        Some(&spec.template),
    ));
    errs.extend(tpl::validate_template(
        "spec.template",
        &spec.template,
        &["Always"],
    ));
    if let Some(d) = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
    {
        errs.push(FieldError::invalid(
            "spec.template.spec.activeDeadlineSeconds",
            d,
            "activeDeadlineSeconds in ReplicaSet is not Supported",
        ));
    }
    if let Some(strategy) = &spec.strategy {
        validate_strategy(strategy, &mut errs);
    }
    tpl::non_negative(
        "spec.revisionHistoryLimit",
        spec.revision_history_limit.map(i64::from),
        &mut errs,
    );
    tpl::non_negative(
        "spec.minReadySeconds",
        spec.min_ready_seconds.map(i64::from),
        &mut errs,
    );
    if let Some(p) = spec.progress_deadline_seconds {
        tpl::non_negative(
            "spec.progressDeadlineSeconds",
            Some(i64::from(p)),
            &mut errs,
        );
        if p <= spec.min_ready_seconds.unwrap_or(0) {
            errs.push(FieldError::invalid(
                "spec.progressDeadlineSeconds",
                p,
                "must be greater than minReadySeconds",
            ));
        }
    }
    errs
}

fn validate_strategy(strategy: &DeploymentStrategy, errs: &mut Vec<FieldError>) {
    match strategy.type_.as_deref().unwrap_or("RollingUpdate") {
        "Recreate" => {
            if strategy.rolling_update.is_some() {
                errs.push(FieldError::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        "RollingUpdate" => {
            let Some(ru) = &strategy.rolling_update else {
                return;
            };
            let path = "spec.strategy.rollingUpdate";
            if let Some(v) = &ru.max_unavailable {
                tpl::int_or_percent(&format!("{path}.maxUnavailable"), v, errs);
            }
            if let Some(v) = &ru.max_surge {
                tpl::int_or_percent(&format!("{path}.maxSurge"), v, errs);
            }
            if tpl::is_zero(ru.max_unavailable.as_ref()) && tpl::is_zero(ru.max_surge.as_ref()) {
                errs.push(FieldError::invalid(
                    format!("{path}.maxUnavailable"),
                    tpl::GoIntOrString(ru.max_unavailable.as_ref()),
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            "spec.strategy.type",
            other,
            &["Recreate", "RollingUpdate"],
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};

    pub(crate) fn deployment(name: &str, app: &str) -> Deployment {
        let labels: std::collections::BTreeMap<String, String> =
            [("app".to_string(), app.to_string())].into();
        Deployment {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                selector: LabelSelector {
                    match_labels: Some(labels.clone()),
                    match_expressions: None,
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "web".into(),
                            image: Some("miniorch/demo:1".into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn fields(d: &Deployment) -> Vec<String> {
        d.validate().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn defaults_as_upstream() {
        let mut d = deployment("web", "web");
        d.apply_defaults();
        let s = d.spec.as_ref().unwrap();
        assert_eq!(s.replicas, Some(1));
        let st = s.strategy.as_ref().unwrap();
        assert_eq!(st.type_.as_deref(), Some("RollingUpdate"));
        let ru = st.rolling_update.as_ref().unwrap();
        assert_eq!(ru.max_surge, Some(IntOrString::String("25%".into())));
        assert_eq!(ru.max_unavailable, Some(IntOrString::String("25%".into())));
        assert_eq!(s.revision_history_limit, Some(10));
        assert_eq!(s.progress_deadline_seconds, Some(600));
        let pod = s.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Always"));
        assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirst"));
        let once = d.clone();
        d.apply_defaults();
        assert_eq!(d, once);
        // Recreate gets no rolling-update parameters.
        let mut r = deployment("web", "web");
        r.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        r.apply_defaults();
        assert!(r.spec.unwrap().strategy.unwrap().rolling_update.is_none());
    }

    #[test]
    fn validation_names_the_field() {
        let ok = deployment("web", "web");
        assert!(ok.validate().is_empty(), "{:?}", ok.validate());
        let mut cases: Vec<(Deployment, Vec<&str>)> = Vec::new();
        let mut d = deployment("web", "web");
        d.spec.as_mut().unwrap().replicas = Some(-1);
        cases.push((d, vec!["spec.replicas"]));
        let mut d = deployment("web", "web");
        d.spec.as_mut().unwrap().selector = LabelSelector {
            match_labels: Some([("app".to_string(), "other".to_string())].into()),
            match_expressions: None,
        };
        cases.push((d, vec!["spec.template.metadata.labels"]));
        let mut d = deployment("web", "web");
        d.spec.as_mut().unwrap().selector = LabelSelector::default();
        cases.push((d, vec!["spec.selector", "spec.template.metadata.labels"]));
        let mut d = deployment("web", "web");
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .restart_policy = Some("OnFailure".into());
        cases.push((d, vec!["spec.template.spec.restartPolicy"]));
        let mut d = deployment("web", "web");
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = None;
        cases.push((d, vec!["spec.template.spec.containers[0].image"]));
        let mut d = deployment("web", "web");
        d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: Some(RollingUpdateDeployment::default()),
        });
        cases.push((d, vec!["spec.strategy.rollingUpdate"]));
        let mut d = deployment("web", "web");
        d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(0)),
                max_unavailable: Some(IntOrString::String("0%".into())),
            }),
        });
        cases.push((d, vec!["spec.strategy.rollingUpdate.maxUnavailable"]));
        let mut d = deployment("web", "web");
        d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
            type_: Some("BlueGreen".into()),
            rolling_update: None,
        });
        cases.push((d, vec!["spec.strategy.type"]));
        let mut d = deployment("web", "web");
        let s = d.spec.as_mut().unwrap();
        s.min_ready_seconds = Some(10);
        s.progress_deadline_seconds = Some(5);
        cases.push((d, vec!["spec.progressDeadlineSeconds"]));
        for (d, want) in cases {
            assert_eq!(fields(&d), want);
        }
        let mut d = deployment("web", "web");
        d.spec.as_mut().unwrap().replicas = Some(-1);
        assert_eq!(
            d.validate()[0].message,
            "Invalid value: -1: must be greater than or equal to 0"
        );
    }

    #[test]
    fn selector_is_immutable_and_generation_counts_spec_and_annotations() {
        let mut old = deployment("web", "web");
        old.apply_defaults();
        let mut new = deployment("web", "api");
        new.apply_defaults();
        let errs = new.validate_update(&old);
        assert_eq!(errs.last().unwrap().field, "spec.selector");
        assert!(errs.last().unwrap().message.ends_with("field is immutable"));
        let mut same = old.clone();
        assert!(!same.spec_changed(&old));
        same.metadata.generation = Some(1);
        same.metadata.annotations = Some([("a".to_string(), "b".to_string())].into());
        let mut annotated = same.clone();
        annotated.prepare_for_update(&old);
        assert_eq!(annotated.metadata.generation, Some(2));
        // Through /status an annotation may change, the spec and labels may not.
        let mut via_status = same.clone();
        via_status.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        via_status.set_replicas(7);
        via_status.prepare_for_subresource_update(&old, Subresource::Status);
        assert_eq!(via_status.metadata.generation, Some(1));
        assert_eq!(via_status.metadata.annotations, same.metadata.annotations);
        assert_eq!(via_status.metadata.labels, old.metadata.labels);
        assert_eq!(via_status.spec, old.spec);
        let mut scaled = old.clone();
        scaled.set_replicas(3);
        assert!(scaled.spec_changed(&old));
        assert_eq!(scaled.scale(), Some((3, 0, "app=web".to_string())));
        // Status comes only through /status; the main resource keeps the stored one.
        let mut with_status = old.clone();
        with_status.status = Some(DeploymentStatus {
            replicas: Some(5),
            ..Default::default()
        });
        with_status.prepare_for_update(&old);
        assert_eq!(with_status.status, old.status);
        let mut status_only = scaled.clone();
        status_only.status = Some(DeploymentStatus {
            replicas: Some(5),
            ..Default::default()
        });
        status_only.prepare_for_subresource_update(&old, Subresource::Status);
        assert_eq!(status_only.spec, old.spec);
        assert_eq!(status_only.status.unwrap().replicas, Some(5));
    }

    #[test]
    fn cells_follow_print_deployment() {
        let now = jiff::Timestamp::from_second(10_000).unwrap();
        let mut d = deployment("web", "web");
        d.apply_defaults();
        d.spec.as_mut().unwrap().replicas = Some(3);
        d.metadata.creation_timestamp =
            Some(Time(jiff::Timestamp::from_second(10_000 - 30).unwrap()));
        d.status = Some(DeploymentStatus {
            ready_replicas: Some(2),
            updated_replicas: Some(3),
            available_replicas: Some(1),
            ..Default::default()
        });
        assert_eq!(
            d.cells(now),
            vec![
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(1),
                json!("30s"),
                json!("web"),
                json!("miniorch/demo:1"),
                json!("app=web"),
            ]
        );
        assert_eq!(Deployment::columns().len(), d.cells(now).len());
    }
}

//! DaemonSets (apps/v1): upstream's defaults (RollingUpdate with maxUnavailable 1 and maxSurge
//! 0, history 10), validation, an immutable selector, `generation` on spec changes, the
//! `status` subresource and the `kubectl get` columns (with the template's node selector).

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetStatus, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use crate::errors::FieldError;
use crate::kinds::podtemplate::{self as tpl, CONTAINERS_DOC, IMAGES_DOC};
use crate::registry::{Column, Kind, Subresource};
use crate::table;

impl Kind for DaemonSet {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "daemonset";
    const SHORT_NAMES: &'static [&'static str] = &["ds"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const SUBRESOURCES: &'static [Subresource] = &[Subresource::Status];
    const TRACKS_GENERATION: bool = true;

    fn prepare_for_create(&mut self) {
        self.status = Some(DaemonSetStatus::default());
        let given = template_generation(self);
        set_template_generation(self, given.max(1));
    }

    fn apply_defaults(&mut self) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        let strategy = spec
            .update_strategy
            .get_or_insert_with(DaemonSetUpdateStrategy::default);
        let rolling =
            *strategy.type_.get_or_insert_with(|| "RollingUpdate".into()) == "RollingUpdate";
        if rolling {
            let ru = strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateDaemonSet::default);
            ru.max_unavailable.get_or_insert(IntOrString::Int(1));
            ru.max_surge.get_or_insert(IntOrString::Int(0));
        }
        spec.revision_history_limit.get_or_insert(10);
        tpl::default_template(&mut spec.template);
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
        let template = |d: &DaemonSet| d.spec.as_ref().map(|s| s.template.clone());
        let old_generation = template_generation(old).max(1);
        let generation = if template(self) != template(old) {
            old_generation + 1
        } else {
            old_generation
        };
        set_template_generation(self, generation);
    }

    fn prepare_for_subresource_update(&mut self, old: &Self, sub: Subresource) {
        // Everything but the spec may change through /status, as upstream's status strategy.
        if sub == Subresource::Status {
            self.spec = old.spec.clone();
        }
    }

    fn spec_changed(&self, old: &Self) -> bool {
        self.spec != old.spec
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name_column(),
            Column::new(
                "Desired",
                "integer",
                "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod).",
            ),
            Column::new(
                "Current",
                "integer",
                "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
            ),
            Column::new(
                "Ready",
                "integer",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.",
            ),
            Column::new(
                "Up-to-date",
                "integer",
                "The total number of nodes that are running updated daemon pod",
            ),
            Column::new(
                "Available",
                "integer",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
            ),
            Column::new(
                "Node Selector",
                "string",
                "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node.",
            ),
            Column::age_column(),
            Column::new("Containers", "string", CONTAINERS_DOC).wide(),
            Column::new("Images", "string", IMAGES_DOC).wide(),
            Column::new(
                "Selector",
                "string",
                "A label query over pods that are managed by the daemon set. Must match in order to be controlled.",
            )
            .wide(),
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let spec = self.spec.as_ref();
        let status = self.status.clone().unwrap_or_default();
        let pod = spec.and_then(|s| s.template.spec.as_ref());
        let (containers, images) = tpl::container_cells(pod);
        vec![
            json!(self.metadata.name.clone().unwrap_or_default()),
            json!(status.desired_number_scheduled),
            json!(status.current_number_scheduled),
            json!(status.number_ready),
            json!(status.updated_number_scheduled.unwrap_or(0)),
            json!(status.number_available.unwrap_or(0)),
            json!(tpl::format_labels(
                pod.and_then(|p| p.node_selector.as_ref())
            )),
            json!(table::age(self.metadata.creation_timestamp.as_ref(), now)),
            json!(containers),
            json!(images),
            json!(tpl::selector_string(spec.map(|s| &s.selector))),
        ]
    }
}

/// apps/v1 keeps the internal `spec.templateGeneration` in this annotation: 1 at creation, one
/// more each time the pod template changes.
const TEMPLATE_GENERATION: &str = "deprecated.daemonset.template.generation";

fn template_generation(d: &DaemonSet) -> i64 {
    d.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TEMPLATE_GENERATION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn set_template_generation(d: &mut DaemonSet, generation: i64) {
    d.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(TEMPLATE_GENERATION.to_string(), generation.to_string());
}

/// Upstream's `ValidateDaemonSetSpec`.
fn validate_spec(spec: &DaemonSetSpec) -> Vec<FieldError> {
    let mut errs = tpl::validate_selector(
        "spec.selector",
        &spec.selector,
        "spec.template",
        Some(&spec.template),
    );
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
            "activeDeadlineSeconds in DaemonSet is not Supported",
        ));
    }
    tpl::non_negative(
        "spec.minReadySeconds",
        spec.min_ready_seconds.map(i64::from),
        &mut errs,
    );
    tpl::non_negative(
        "spec.revisionHistoryLimit",
        spec.revision_history_limit.map(i64::from),
        &mut errs,
    );
    if let Some(strategy) = &spec.update_strategy {
        match strategy.type_.as_deref().unwrap_or("RollingUpdate") {
            "OnDelete" => {}
            "RollingUpdate" => {
                if let Some(ru) = &strategy.rolling_update {
                    let path = "spec.updateStrategy.rollingUpdate";
                    if let Some(v) = &ru.max_unavailable {
                        tpl::int_or_percent(&format!("{path}.maxUnavailable"), v, &mut errs);
                    }
                    if let Some(v) = &ru.max_surge {
                        tpl::int_or_percent(&format!("{path}.maxSurge"), v, &mut errs);
                    }
                    let unavailable_zero = tpl::is_zero(ru.max_unavailable.as_ref());
                    let surge_zero = tpl::is_zero(ru.max_surge.as_ref());
                    if unavailable_zero && surge_zero {
                        errs.push(FieldError::invalid(
                            format!("{path}.maxUnavailable"),
                            tpl::GoIntOrString(ru.max_unavailable.as_ref()),
                            "cannot be 0 when maxSurge is 0",
                        ));
                    } else if !unavailable_zero && !surge_zero {
                        errs.push(FieldError::invalid(
                            format!("{path}.maxSurge"),
                            tpl::GoIntOrString(ru.max_surge.as_ref()),
                            "may not be set when maxUnavailable is non-zero",
                        ));
                    }
                }
            }
            other => errs.push(FieldError::not_supported(
                "spec.updateStrategy.type",
                other,
                &["OnDelete", "RollingUpdate"],
            )),
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    fn ds() -> DaemonSet {
        let labels: std::collections::BTreeMap<String, String> =
            [("app".to_string(), "agent".to_string())].into();
        DaemonSet {
            metadata: ObjectMeta {
                name: Some("agent".into()),
                ..Default::default()
            },
            spec: Some(DaemonSetSpec {
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
                            name: "agent".into(),
                            image: Some("miniorch/demo:1".into()),
                            ..Default::default()
                        }],
                        node_selector: Some(
                            [("kubernetes.io/os".to_string(), "linux".to_string())].into(),
                        ),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn defaults_as_upstream() {
        let mut d = ds();
        d.apply_defaults();
        let s = d.spec.as_ref().unwrap();
        let st = s.update_strategy.as_ref().unwrap();
        assert_eq!(st.type_.as_deref(), Some("RollingUpdate"));
        let ru = st.rolling_update.as_ref().unwrap();
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(ru.max_surge, Some(IntOrString::Int(0)));
        assert_eq!(s.revision_history_limit, Some(10));
        assert!(d.validate().is_empty(), "{:?}", d.validate());
    }

    #[test]
    fn template_generation_counts_template_changes() {
        let mut d = ds();
        d.prepare_for_create();
        assert_eq!(template_generation(&d), 1);
        let old = d.clone();
        let mut same = old.clone();
        same.metadata.annotations = None;
        same.spec.as_mut().unwrap().min_ready_seconds = Some(5);
        same.prepare_for_update(&old);
        assert_eq!(template_generation(&same), 1);
        let mut changed = old.clone();
        changed
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("miniorch/demo:2".into());
        changed.prepare_for_update(&old);
        assert_eq!(template_generation(&changed), 2);
    }

    #[test]
    fn validation_names_the_field() {
        let fields =
            |d: &DaemonSet| -> Vec<String> { d.validate().into_iter().map(|e| e.field).collect() };
        let mut d = ds();
        d.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy {
            type_: Some("Sometimes".into()),
            rolling_update: None,
        });
        assert_eq!(fields(&d), vec!["spec.updateStrategy.type"]);
        let mut d = ds();
        d.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDaemonSet {
                max_unavailable: Some(IntOrString::Int(0)),
                max_surge: Some(IntOrString::Int(0)),
            }),
        });
        assert_eq!(
            fields(&d),
            vec!["spec.updateStrategy.rollingUpdate.maxUnavailable"]
        );
        let mut d = ds();
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .restart_policy = Some("Never".into());
        assert_eq!(fields(&d), vec!["spec.template.spec.restartPolicy"]);
        let mut d = ds();
        d.spec.as_mut().unwrap().selector = LabelSelector::default();
        assert_eq!(
            fields(&d),
            vec!["spec.selector", "spec.template.metadata.labels"]
        );
    }

    #[test]
    fn cells_follow_print_daemon_set() {
        let mut d = ds();
        d.status = Some(DaemonSetStatus {
            desired_number_scheduled: 3,
            current_number_scheduled: 3,
            number_ready: 2,
            updated_number_scheduled: Some(3),
            number_available: Some(2),
            ..Default::default()
        });
        let cells = d.cells(jiff::Timestamp::from_second(0).unwrap());
        assert_eq!(
            cells[..7],
            [
                json!("agent"),
                json!(3),
                json!(3),
                json!(2),
                json!(3),
                json!(2),
                json!("kubernetes.io/os=linux")
            ]
        );
        assert_eq!(cells.len(), DaemonSet::columns().len());
        assert_eq!(cells[10], json!("app=agent"));
    }
}

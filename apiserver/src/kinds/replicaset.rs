//! ReplicaSets (apps/v1): one replica by default, upstream's validation (a selector that
//! selects the template, restartPolicy Always), an immutable selector, `generation` on spec
//! changes, the `scale` and `status` subresources, the `status.replicas` field selector and the
//! `kubectl get` columns.

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec, ReplicaSetStatus};
use serde_json::{Value, json};

use crate::errors::FieldError;
use crate::kinds::podtemplate::{self as tpl, CONTAINERS_DOC, IMAGES_DOC};
use crate::registry::{Column, Kind, Subresource};
use crate::table;

impl Kind for ReplicaSet {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "replicaset";
    const SHORT_NAMES: &'static [&'static str] = &["rs"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const SUBRESOURCES: &'static [Subresource] = &[Subresource::Scale, Subresource::Status];
    const FIELDS: &'static [&'static str] = &["status.replicas"];
    const TRACKS_GENERATION: bool = true;

    fn field(&self, field: &str) -> Option<String> {
        match field {
            "status.replicas" => Some(self.status.as_ref().map_or(0, |s| s.replicas).to_string()),
            _ => None,
        }
    }

    fn prepare_for_create(&mut self) {
        self.status = Some(ReplicaSetStatus::default());
    }

    fn apply_defaults(&mut self) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        spec.replicas.get_or_insert(1);
        if let Some(t) = spec.template.as_mut() {
            tpl::default_template(t);
        }
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

    fn scale(&self) -> Option<(i32, i32, String)> {
        let spec = self.spec.as_ref()?;
        Some((
            spec.replicas.unwrap_or(1),
            self.status.as_ref().map_or(0, |s| s.replicas),
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
            Column::new(
                "Desired",
                "integer",
                "Replicas is the number of desired pods. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1.",
            ),
            Column::new(
                "Current",
                "integer",
                "Replicas is the most recently observed number of non-terminating pods.",
            ),
            Column::new(
                "Ready",
                "integer",
                "The number of non-terminating pods targeted by this ReplicaSet with a Ready Condition.",
            ),
            Column::age_column(),
            Column::new("Containers", "string", CONTAINERS_DOC).wide(),
            Column::new("Images", "string", IMAGES_DOC).wide(),
            Column::new(
                "Selector",
                "string",
                "Selector is a label query over pods that should match the replica count.",
            )
            .wide(),
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let spec = self.spec.as_ref();
        let status = self.status.clone().unwrap_or_default();
        let (containers, images) = tpl::container_cells(
            spec.and_then(|s| s.template.as_ref())
                .and_then(|t| t.spec.as_ref()),
        );
        vec![
            json!(self.metadata.name.clone().unwrap_or_default()),
            json!(spec.and_then(|s| s.replicas).unwrap_or(0)),
            json!(status.replicas),
            json!(status.ready_replicas.unwrap_or(0)),
            json!(table::age(self.metadata.creation_timestamp.as_ref(), now)),
            json!(containers),
            json!(images),
            json!(tpl::selector_string(spec.map(|s| &s.selector))),
        ]
    }
}

/// Upstream's `ValidateReplicaSetSpec`.
fn validate_spec(spec: &ReplicaSetSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    tpl::non_negative("spec.replicas", spec.replicas.map(i64::from), &mut errs);
    tpl::non_negative(
        "spec.minReadySeconds",
        spec.min_ready_seconds.map(i64::from),
        &mut errs,
    );
    errs.extend(tpl::validate_selector(
        "spec.selector",
        &spec.selector,
        "spec.template",
        spec.template.as_ref(),
    ));
    match &spec.template {
        None => errs.push(FieldError::required("spec.template", "")),
        Some(t) => {
            errs.extend(tpl::validate_template("spec.template", t, &["Always"]));
            if let Some(d) = t.spec.as_ref().and_then(|s| s.active_deadline_seconds) {
                errs.push(FieldError::invalid(
                    "spec.template.spec.activeDeadlineSeconds",
                    d,
                    "activeDeadlineSeconds in ReplicaSet is not Supported",
                ));
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    fn rs(app: &str) -> ReplicaSet {
        let labels: std::collections::BTreeMap<String, String> =
            [("app".to_string(), app.to_string())].into();
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                selector: LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    match_expressions: None,
                },
                template: Some(PodTemplateSpec {
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
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn defaults_validation_and_cells() {
        let mut r = rs("web");
        r.apply_defaults();
        assert_eq!(r.spec.as_ref().unwrap().replicas, Some(1));
        assert!(r.validate().is_empty());
        let fields =
            |r: &ReplicaSet| -> Vec<String> { r.validate().into_iter().map(|e| e.field).collect() };
        assert_eq!(fields(&rs("api")), vec!["spec.template.metadata.labels"]);
        let mut neg = rs("web");
        neg.spec.as_mut().unwrap().replicas = Some(-2);
        assert_eq!(fields(&neg), vec!["spec.replicas"]);
        let mut none = rs("web");
        none.spec.as_mut().unwrap().template = None;
        assert_eq!(
            fields(&none),
            vec!["spec.template.metadata.labels", "spec.template"]
        );
        let mut deadline = rs("web");
        deadline
            .spec
            .as_mut()
            .unwrap()
            .template
            .as_mut()
            .unwrap()
            .spec
            .as_mut()
            .unwrap()
            .active_deadline_seconds = Some(5);
        assert_eq!(
            fields(&deadline),
            vec!["spec.template.spec.activeDeadlineSeconds"]
        );

        r.status = Some(ReplicaSetStatus {
            replicas: 2,
            ready_replicas: Some(1),
            ..Default::default()
        });
        let now = jiff::Timestamp::from_second(100).unwrap();
        let cells = r.cells(now);
        assert_eq!(cells[..4], [json!("web-1"), json!(1), json!(2), json!(1)]);
        assert_eq!(cells[7], json!("app=web"));
        assert_eq!(cells.len(), ReplicaSet::columns().len());
        assert_eq!(r.field("status.replicas").as_deref(), Some("2"));
        assert_eq!(r.scale(), Some((1, 2, "app=web".to_string())));
    }

    #[test]
    fn selector_is_immutable() {
        let old = rs("web");
        let mut new = rs("web");
        new.spec.as_mut().unwrap().selector.match_labels =
            Some([("tier".to_string(), "x".to_string())].into());
        new.spec
            .as_mut()
            .unwrap()
            .template
            .as_mut()
            .unwrap()
            .metadata
            .as_mut()
            .unwrap()
            .labels = Some([("tier".to_string(), "x".to_string())].into());
        let errs = new.validate_update(&old);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.selector");
    }
}

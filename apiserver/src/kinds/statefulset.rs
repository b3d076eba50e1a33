//! StatefulSets (apps/v1): upstream's defaults (one replica, OrderedReady, RollingUpdate with
//! partition 0, history 10, Retain/Retain claims), validation, what an update may change,
//! `generation` on spec changes, the `scale` and `status` subresources and the `kubectl get`
//! columns.

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetStatus, StatefulSetUpdateStrategy,
};
use serde_json::{Value, json};

use crate::errors::FieldError;
use crate::kinds::podtemplate::{self as tpl, CONTAINERS_DOC, IMAGES_DOC};
use crate::registry::{Column, Kind, Subresource};
use crate::table;

impl Kind for StatefulSet {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "statefulset";
    const SHORT_NAMES: &'static [&'static str] = &["sts"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const SUBRESOURCES: &'static [Subresource] = &[Subresource::Scale, Subresource::Status];
    const TRACKS_GENERATION: bool = true;

    fn prepare_for_create(&mut self) {
        self.status = Some(StatefulSetStatus::default());
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
            // Only these may change; everything else (selector, serviceName, claims...) is fixed.
            let mut fixed = new.clone();
            fixed.replicas = old.replicas;
            fixed.template = old.template.clone();
            fixed.update_strategy = old.update_strategy.clone();
            fixed.min_ready_seconds = old.min_ready_seconds;
            fixed.ordinals = old.ordinals.clone();
            fixed.revision_history_limit = old.revision_history_limit;
            fixed.persistent_volume_claim_retention_policy =
                old.persistent_volume_claim_retention_policy.clone();
            if fixed != *old {
                errs.push(FieldError::forbidden(
                    "spec",
                    "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                ));
            }
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
            Column::new("Ready", "string", "Number of the pod with ready state"),
            Column::age_column(),
            Column::new("Containers", "string", CONTAINERS_DOC).wide(),
            Column::new("Images", "string", IMAGES_DOC).wide(),
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let spec = self.spec.as_ref();
        let status = self.status.clone().unwrap_or_default();
        let (containers, images) =
            tpl::container_cells(spec.and_then(|s| s.template.spec.as_ref()));
        vec![
            json!(self.metadata.name.clone().unwrap_or_default()),
            json!(format!(
                "{}/{}",
                status.ready_replicas.unwrap_or(0),
                spec.and_then(|s| s.replicas).unwrap_or(0)
            )),
            json!(table::age(self.metadata.creation_timestamp.as_ref(), now)),
            json!(containers),
            json!(images),
        ]
    }
}

fn default_spec(spec: &mut StatefulSetSpec) {
    spec.pod_management_policy
        .get_or_insert_with(|| "OrderedReady".into());
    let strategy = spec
        .update_strategy
        .get_or_insert_with(StatefulSetUpdateStrategy::default);
    if strategy.type_.is_none() {
        strategy.type_ = Some("RollingUpdate".into());
        strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateStatefulSetStrategy::default);
    }
    if strategy.type_.as_deref() == Some("RollingUpdate")
        && let Some(ru) = strategy.rolling_update.as_mut()
    {
        ru.partition.get_or_insert(0);
    }
    let retention = spec
        .persistent_volume_claim_retention_policy
        .get_or_insert_with(StatefulSetPersistentVolumeClaimRetentionPolicy::default);
    retention
        .when_deleted
        .get_or_insert_with(|| "Retain".into());
    retention.when_scaled.get_or_insert_with(|| "Retain".into());
    spec.replicas.get_or_insert(1);
    spec.revision_history_limit.get_or_insert(10);
    for claim in spec.volume_claim_templates.iter_mut().flatten() {
        if let Some(s) = claim.spec.as_mut() {
            s.volume_mode.get_or_insert_with(|| "Filesystem".into());
        }
    }
    tpl::default_template(&mut spec.template);
}

/// Upstream's `ValidateStatefulSetSpec`.
fn validate_spec(spec: &StatefulSetSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match spec.pod_management_policy.as_deref() {
        None | Some("OrderedReady" | "Parallel") => {}
        Some(p) => errs.push(FieldError::invalid(
            "spec.podManagementPolicy",
            p,
            "must be 'OrderedReady' or 'Parallel'",
        )),
    }
    if let Some(strategy) = &spec.update_strategy {
        match strategy.type_.as_deref().unwrap_or("RollingUpdate") {
            "RollingUpdate" => {
                if let Some(ru) = &strategy.rolling_update {
                    tpl::non_negative(
                        "spec.updateStrategy.rollingUpdate.partition",
                        ru.partition.map(i64::from),
                        &mut errs,
                    );
                    if let Some(v) = &ru.max_unavailable {
                        tpl::int_or_percent(
                            "spec.updateStrategy.rollingUpdate.maxUnavailable",
                            v,
                            &mut errs,
                        );
                    }
                }
            }
            "OnDelete" => {
                if strategy.rolling_update.is_some() {
                    errs.push(FieldError::forbidden(
                        "spec.updateStrategy.rollingUpdate",
                        "only allowed for updateStrategy 'RollingUpdate'",
                    ));
                }
            }
            other => errs.push(FieldError::invalid(
                "spec.updateStrategy",
                other,
                "must be 'RollingUpdate' or 'OnDelete'",
            )),
        }
    }
    if let Some(p) = &spec.persistent_volume_claim_retention_policy {
        for (field, v) in [
            ("whenDeleted", &p.when_deleted),
            ("whenScaled", &p.when_scaled),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !matches!(*v, "Retain" | "Delete")) {
                errs.push(FieldError::not_supported(
                    format!("spec.persistentVolumeClaimRetentionPolicy.{field}"),
                    v,
                    &["Retain", "Delete"],
                ));
            }
        }
    }
    tpl::non_negative("spec.replicas", spec.replicas.map(i64::from), &mut errs);
    tpl::non_negative(
        "spec.minReadySeconds",
        spec.min_ready_seconds.map(i64::from),
        &mut errs,
    );
    if let Some(o) = &spec.ordinals {
        tpl::non_negative("spec.ordinals.start", o.start.map(i64::from), &mut errs);
    }
    for (i, claim) in spec.volume_claim_templates.iter().flatten().enumerate() {
        if claim.metadata.name.as_deref().unwrap_or("").is_empty() {
            errs.push(FieldError::required(
                format!("spec.volumeClaimTemplates[{i}].metadata.name"),
                "",
            ));
        }
    }
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
            "activeDeadlineSeconds in StatefulSet is not Supported",
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    fn sts() -> StatefulSet {
        let labels: std::collections::BTreeMap<String, String> =
            [("app".to_string(), "db".to_string())].into();
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("db".into()),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                service_name: Some("db".into()),
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
                            name: "db".into(),
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

    #[test]
    fn defaults_as_upstream() {
        let mut s = sts();
        s.apply_defaults();
        let spec = s.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("OrderedReady"));
        let st = spec.update_strategy.as_ref().unwrap();
        assert_eq!(st.type_.as_deref(), Some("RollingUpdate"));
        assert_eq!(st.rolling_update.as_ref().unwrap().partition, Some(0));
        let r = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .unwrap();
        assert_eq!(r.when_deleted.as_deref(), Some("Retain"));
        assert_eq!(r.when_scaled.as_deref(), Some("Retain"));
        assert_eq!(spec.revision_history_limit, Some(10));
        assert!(s.validate().is_empty(), "{:?}", s.validate());
        let once = s.clone();
        s.apply_defaults();
        assert_eq!(s, once);
    }

    #[test]
    fn validation_and_updates() {
        let fields = |s: &StatefulSet| -> Vec<String> {
            s.validate().into_iter().map(|e| e.field).collect()
        };
        let mut s = sts();
        s.spec.as_mut().unwrap().pod_management_policy = Some("Random".into());
        assert_eq!(fields(&s), vec!["spec.podManagementPolicy"]);
        let mut s = sts();
        s.spec.as_mut().unwrap().replicas = Some(-1);
        assert_eq!(fields(&s), vec!["spec.replicas"]);
        let mut s = sts();
        s.spec.as_mut().unwrap().update_strategy = Some(StatefulSetUpdateStrategy {
            type_: Some("OnDelete".into()),
            rolling_update: Some(RollingUpdateStatefulSetStrategy::default()),
        });
        assert_eq!(fields(&s), vec!["spec.updateStrategy.rollingUpdate"]);

        let mut old = sts();
        old.apply_defaults();
        let mut new = old.clone();
        new.set_replicas(5);
        new.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("miniorch/demo:2".into());
        assert!(new.validate_update(&old).is_empty());
        assert!(new.spec_changed(&old));
        new.spec.as_mut().unwrap().service_name = Some("other".into());
        let errs = new.validate_update(&old);
        assert_eq!(errs[0].field, "spec");
        assert_eq!(errs[0].reason, "FieldValueForbidden");
    }

    #[test]
    fn cells_follow_print_stateful_set() {
        let mut s = sts();
        s.apply_defaults();
        s.status = Some(StatefulSetStatus {
            replicas: 1,
            ready_replicas: Some(1),
            ..Default::default()
        });
        let cells = s.cells(jiff::Timestamp::from_second(0).unwrap());
        assert_eq!(cells[..2], [json!("db"), json!("1/1")]);
        assert_eq!(cells[3..], [json!("db"), json!("miniorch/demo:1")]);
        assert_eq!(cells.len(), StatefulSet::columns().len());
        assert_eq!(s.scale(), Some((1, 1, "app=db".to_string())));
    }
}

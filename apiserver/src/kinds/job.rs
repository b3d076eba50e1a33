//! Jobs (batch/v1): upstream's defaults (parallelism and completions 1, backoffLimit 6,
//! NonIndexed, not suspended), the generated selector and pod labels (`controller-uid`,
//! `job-name`, and their `batch.kubernetes.io/` forms) unless `manualSelector`, validation (a
//! template restartPolicy of OnFailure or Never), what an update may change, `generation`, the
//! `status` subresource, the `status.successful` field selector and the `kubectl get` columns.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::{Value, json};

use crate::errors::FieldError;
use crate::kinds::podtemplate::{self as tpl, CONTAINERS_DOC, IMAGES_DOC};
use crate::registry::{Column, Kind, Subresource};
use crate::table;

pub(crate) const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub(crate) const JOB_NAME: &str = "batch.kubernetes.io/job-name";
const LEGACY_CONTROLLER_UID: &str = "controller-uid";
const LEGACY_JOB_NAME: &str = "job-name";

impl Kind for Job {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "job";
    const CATEGORIES: &'static [&'static str] = &["all"];
    const SUBRESOURCES: &'static [Subresource] = &[Subresource::Status];
    const FIELDS: &'static [&'static str] = &["status.successful"];
    const TRACKS_GENERATION: bool = true;

    fn field(&self, field: &str) -> Option<String> {
        match field {
            "status.successful" => Some(
                self.status
                    .as_ref()
                    .and_then(|s| s.succeeded)
                    .unwrap_or(0)
                    .to_string(),
            ),
            _ => None,
        }
    }

    fn prepare_for_create(&mut self) {
        self.status = Some(JobStatus::default());
        let uid = self.metadata.uid.clone().unwrap_or_default();
        let name = self.metadata.name.clone().unwrap_or_default();
        if let Some(spec) = self.spec.as_mut() {
            let manual = *spec.manual_selector.get_or_insert(false);
            if !manual {
                generate_selector(spec, &uid, &name);
            }
        }
    }

    fn apply_defaults(&mut self) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        default_job_spec(spec);
        // A job without labels of its own takes its pods' labels, as upstream's defaulting.
        let template_labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .filter(|l| !l.is_empty());
        if self.metadata.labels.as_ref().is_none_or(BTreeMap::is_empty)
            && let Some(l) = template_labels
        {
            self.metadata.labels = Some(l);
        }
    }

    fn validate(&self) -> Vec<FieldError> {
        let Some(spec) = &self.spec else {
            return vec![FieldError::required("spec", "")];
        };
        let mut errs = validate_generated_selector(&self.metadata, spec);
        errs.extend(validate_job_spec("spec", spec));
        match &spec.selector {
            None => errs.push(FieldError::required("spec.selector", "")),
            Some(sel) => errs.extend(tpl::validate_selector(
                "spec.selector",
                sel,
                "spec.template",
                Some(&spec.template),
            )),
        }
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        let (Some(new), Some(old_spec)) = (&self.spec, &old.spec) else {
            return errs;
        };
        let indexed = new.completion_mode.as_deref() == Some("Indexed");
        if new.completions != old_spec.completions {
            // Elastic indexed jobs: completions may follow parallelism.
            if !indexed || new.completions.is_none() || new.completions != new.parallelism {
                errs.push(immutable("spec.completions", new.completions));
            }
        }
        if new.selector != old_spec.selector {
            errs.push(match &new.selector {
                Some(s) => {
                    FieldError::invalid("spec.selector", tpl::GoSelector(s), "field is immutable")
                }
                None => immutable("spec.selector", "nil"),
            });
        }
        // A suspended job that never ran may still move: its scheduling directives may change.
        let never_started = old.status.as_ref().is_none_or(|s| s.start_time.is_none());
        let mut allowed = old_spec.template.clone();
        if new.suspend == Some(true) && never_started {
            let t = &new.template;
            let meta = allowed.metadata.get_or_insert_with(ObjectMeta::default);
            meta.labels = t.metadata.as_ref().and_then(|m| m.labels.clone());
            meta.annotations = t.metadata.as_ref().and_then(|m| m.annotations.clone());
            if let (Some(a), Some(n)) = (allowed.spec.as_mut(), t.spec.as_ref()) {
                a.node_selector = n.node_selector.clone();
                a.tolerations = n.tolerations.clone();
                a.scheduling_gates = n.scheduling_gates.clone();
                match (&mut a.affinity, &n.affinity) {
                    (Some(a), Some(n)) => a.node_affinity = n.node_affinity.clone(),
                    (None, Some(n)) => {
                        a.affinity = Some(k8s_openapi::api::core::v1::Affinity {
                            node_affinity: n.node_affinity.clone(),
                            ..Default::default()
                        })
                    }
                    (Some(x), None) => {
                        x.node_affinity = None;
                        if *x == Default::default() {
                            a.affinity = None;
                        }
                    }
                    (None, None) => {}
                }
            }
            if allowed.metadata == Some(ObjectMeta::default()) && t.metadata.is_none() {
                allowed.metadata = None;
            }
        }
        if new.template != allowed {
            errs.push(immutable("spec.template", Elided("core.PodTemplateSpec")));
        }
        for (path, changed) in [
            (
                "spec.completionMode",
                new.completion_mode != old_spec.completion_mode,
            ),
            (
                "spec.podFailurePolicy",
                new.pod_failure_policy != old_spec.pod_failure_policy,
            ),
            (
                "spec.backoffLimitPerIndex",
                new.backoff_limit_per_index != old_spec.backoff_limit_per_index,
            ),
            ("spec.managedBy", new.managed_by != old_spec.managed_by),
            (
                "spec.successPolicy",
                new.success_policy != old_spec.success_policy,
            ),
        ] {
            if changed {
                errs.push(immutable(path, Elided("the new value")));
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

    fn columns() -> Vec<Column> {
        vec![
            Column::name_column(),
            Column::new("Status", "string", "Status of the job."),
            Column::new(
                "Completions",
                "string",
                "The number of pods which reached phase Succeeded.",
            ),
            Column::new("Duration", "string", "Time required to complete the job."),
            Column::age_column(),
            Column::new("Containers", "string", CONTAINERS_DOC).wide(),
            Column::new("Images", "string", IMAGES_DOC).wide(),
            Column::new(
                "Selector",
                "string",
                "A label query over pods that should match the pod count.",
            )
            .wide(),
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        let succeeded = status.succeeded.unwrap_or(0);
        let completions = match spec.completions {
            Some(c) => format!("{succeeded}/{c}"),
            None => match spec.parallelism.unwrap_or(0) {
                p if p > 1 => format!("{succeeded}/1 of {p}"),
                _ => format!("{succeeded}/1"),
            },
        };
        let duration = match (&status.start_time, &status.completion_time) {
            (None, _) => String::new(),
            (Some(start), None) => {
                miniorch_api::format::human_duration(now.as_second() - start.0.as_second())
            }
            (Some(start), Some(end)) => {
                miniorch_api::format::human_duration(end.0.as_second() - start.0.as_second())
            }
        };
        let (containers, images) = tpl::container_cells(spec.template.spec.as_ref());
        let selector = match &spec.selector {
            Some(s) => tpl::selector_string(Some(s)),
            None => String::new(),
        };
        vec![
            json!(self.metadata.name.clone().unwrap_or_default()),
            json!(job_status(self)),
            json!(completions),
            json!(duration),
            json!(table::age(self.metadata.creation_timestamp.as_ref(), now)),
            json!(containers),
            json!(images),
            json!(selector),
        ]
    }
}

/// The Status cell, as upstream's printJob decides it.
fn job_status(job: &Job) -> &'static str {
    let has = |t: &str| {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == t && c.status == "True"))
    };
    if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if job.metadata.deletion_timestamp.is_some() {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    }
}

/// Upstream's `SetDefaults_Job` for the spec (also used for cron job templates' pods).
fn default_job_spec(spec: &mut JobSpec) {
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
    }
    spec.parallelism.get_or_insert(1);
    if spec.backoff_limit.is_none() {
        spec.backoff_limit = Some(if spec.backoff_limit_per_index.is_some() {
            i32::MAX
        } else {
            6
        });
    }
    spec.completion_mode
        .get_or_insert_with(|| "NonIndexed".into());
    spec.suspend.get_or_insert(false);
    if let Some(policy) = spec.pod_failure_policy.as_mut() {
        for rule in policy.rules.iter_mut() {
            for pattern in rule.on_pod_conditions.iter_mut().flatten() {
                if pattern.status.is_empty() {
                    pattern.status = "True".into();
                }
            }
        }
    }
    if spec.pod_replacement_policy.is_none() {
        spec.pod_replacement_policy = Some(if spec.pod_failure_policy.is_some() {
            "Failed".into()
        } else {
            "TerminatingOrFailed".into()
        });
    }
    tpl::default_template(&mut spec.template);
}

/// Upstream's `generateSelector`: labels that tie the pods to this job only.
fn generate_selector(spec: &mut JobSpec, uid: &str, name: &str) {
    let labels = spec
        .template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .labels
        .get_or_insert_with(BTreeMap::new);
    // Labels the client set itself stay; validation rejects them if they conflict.
    for key in [LEGACY_JOB_NAME, JOB_NAME] {
        labels
            .entry(key.to_string())
            .or_insert_with(|| name.to_string());
    }
    for key in [LEGACY_CONTROLLER_UID, CONTROLLER_UID] {
        labels
            .entry(key.to_string())
            .or_insert_with(|| uid.to_string());
    }
    let selector = spec.selector.get_or_insert_with(LabelSelector::default);
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .entry(CONTROLLER_UID.to_string())
        .or_insert_with(|| uid.to_string());
}

/// Upstream's `ValidateGeneratedSelector`: a generated selector must be the one generated.
fn validate_generated_selector(meta: &ObjectMeta, spec: &JobSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if spec.manual_selector == Some(true) {
        return errs;
    }
    let Some(selector) = &spec.selector else {
        return errs;
    };
    let uid = meta.uid.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    if uid.is_empty() {
        errs.push(FieldError::required("metadata.uid", ""));
    }
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    for (key, want) in [
        (LEGACY_CONTROLLER_UID, &uid),
        (CONTROLLER_UID, &uid),
        (LEGACY_JOB_NAME, &name),
        (JOB_NAME, &name),
    ] {
        let path = format!("spec.template.metadata.labels[{key}]");
        match labels.and_then(|l| l.get(key)) {
            None => errs.push(FieldError::required(path, want)),
            Some(v) if v != want => errs.push(FieldError::invalid(
                path,
                tpl::GoMap(labels),
                &format!("must be '{want}'"),
            )),
            Some(_) => {}
        }
    }
    let expected: BTreeMap<String, String> = [
        (LEGACY_CONTROLLER_UID.to_string(), uid.clone()),
        (CONTROLLER_UID.to_string(), uid),
        (LEGACY_JOB_NAME.to_string(), name.clone()),
        (JOB_NAME.to_string(), name),
    ]
    .into();
    if let Ok(q) = miniorch_api::selector::LabelQuery::from_label_selector(selector)
        && !q.matches(Some(&expected))
    {
        errs.push(FieldError::invalid(
            "spec.selector",
            tpl::GoSelector(selector),
            "`selector` not auto-generated",
        ));
    }
    errs
}

/// Upstream's `validateJobSpec`: what a job and a cron job's job template share; `path` is
/// where the spec sits (`spec`, or `spec.jobTemplate.spec`).
pub(crate) fn validate_job_spec(path: &str, spec: &JobSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (field, v) in [
        ("parallelism", spec.parallelism.map(i64::from)),
        ("completions", spec.completions.map(i64::from)),
        ("activeDeadlineSeconds", spec.active_deadline_seconds),
        ("backoffLimit", spec.backoff_limit.map(i64::from)),
        (
            "ttlSecondsAfterFinished",
            spec.ttl_seconds_after_finished.map(i64::from),
        ),
        (
            "backoffLimitPerIndex",
            spec.backoff_limit_per_index.map(i64::from),
        ),
        ("maxFailedIndexes", spec.max_failed_indexes.map(i64::from)),
    ] {
        tpl::non_negative(&format!("{path}.{field}"), v, &mut errs);
    }
    match spec.completion_mode.as_deref() {
        None | Some("NonIndexed") => {}
        Some("Indexed") => {
            if spec.completions.is_none() {
                errs.push(FieldError::required(
                    format!("{path}.completions"),
                    "when completion mode is Indexed",
                ));
            }
        }
        Some(other) => errs.push(FieldError::not_supported(
            format!("{path}.completionMode"),
            other,
            &["NonIndexed", "Indexed"],
        )),
    }
    if let Some(p) = spec.pod_replacement_policy.as_deref()
        && !matches!(p, "TerminatingOrFailed" | "Failed")
    {
        errs.push(FieldError::not_supported(
            format!("{path}.podReplacementPolicy"),
            p,
            &["Failed", "TerminatingOrFailed"],
        ));
    }
    errs.extend(tpl::validate_template(
        &format!("{path}.template"),
        &spec.template,
        &["OnFailure", "Never"],
    ));
    errs
}

fn immutable(path: &str, value: impl std::fmt::Debug) -> FieldError {
    FieldError::invalid(path, value, "field is immutable")
}

/// A value too large to repeat in a message, named by its type.
struct Elided(&'static str);

impl std::fmt::Debug for Elided {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{{...}}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobCondition;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    pub(crate) fn job(restart: &str) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("pi".into()),
                uid: Some("u-1".into()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        restart_policy: Some(restart.into()),
                        containers: vec![Container {
                            name: "pi".into(),
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

    fn created(restart: &str) -> Job {
        let mut j = job(restart);
        j.prepare_for_create();
        j.apply_defaults();
        j
    }

    #[test]
    fn create_generates_the_selector_and_labels() {
        let j = created("Never");
        let spec = j.spec.as_ref().unwrap();
        let sel = spec
            .selector
            .as_ref()
            .unwrap()
            .match_labels
            .clone()
            .unwrap();
        assert_eq!(
            sel,
            [(CONTROLLER_UID.to_string(), "u-1".to_string())].into()
        );
        let labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        for (k, v) in [
            (CONTROLLER_UID, "u-1"),
            ("controller-uid", "u-1"),
            (JOB_NAME, "pi"),
            ("job-name", "pi"),
        ] {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
        }
        // The job takes its pods' labels when it has none.
        assert_eq!(j.metadata.labels.as_ref(), Some(&labels));
        assert_eq!(spec.manual_selector, Some(false));
        assert!(j.validate().is_empty(), "{:?}", j.validate());
    }

    #[test]
    fn defaults_as_upstream() {
        let j = created("Never");
        let s = j.spec.as_ref().unwrap();
        assert_eq!(s.parallelism, Some(1));
        assert_eq!(s.completions, Some(1));
        assert_eq!(s.backoff_limit, Some(6));
        assert_eq!(s.completion_mode.as_deref(), Some("NonIndexed"));
        assert_eq!(s.suspend, Some(false));
        assert_eq!(
            s.pod_replacement_policy.as_deref(),
            Some("TerminatingOrFailed")
        );
        // A work queue (parallelism without completions) keeps completions unset.
        let mut q = job("Never");
        q.spec.as_mut().unwrap().parallelism = Some(3);
        q.apply_defaults();
        assert_eq!(q.spec.as_ref().unwrap().completions, None);
        assert_eq!(q.spec.as_ref().unwrap().parallelism, Some(3));
        let mut per_index = job("Never");
        per_index.spec.as_mut().unwrap().backoff_limit_per_index = Some(1);
        per_index.apply_defaults();
        assert_eq!(per_index.spec.unwrap().backoff_limit, Some(i32::MAX));
    }

    #[test]
    fn validation_names_the_field() {
        let errs = created("Always").validate();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.template.spec.restartPolicy");
        assert_eq!(
            errs[0].message,
            "Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
        );
        // No restartPolicy defaults to Always, which a job may not use.
        let mut none = job("Never");
        none.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .restart_policy = None;
        none.prepare_for_create();
        none.apply_defaults();
        assert_eq!(none.validate()[0].field, "spec.template.spec.restartPolicy");
        let mut neg = created("OnFailure");
        neg.spec.as_mut().unwrap().backoff_limit = Some(-1);
        assert_eq!(neg.validate()[0].field, "spec.backoffLimit");
        // A selector the server did not generate.
        let mut manual = job("Never");
        manual.spec.as_mut().unwrap().selector = Some(LabelSelector {
            match_labels: Some([("app".to_string(), "x".to_string())].into()),
            match_expressions: None,
        });
        manual.prepare_for_create();
        manual.apply_defaults();
        let fields: Vec<String> = manual.validate().into_iter().map(|e| e.field).collect();
        assert!(fields.contains(&"spec.selector".to_string()), "{fields:?}");
        // With manualSelector the client's selector must select the template.
        let mut manual = job("Never");
        let spec = manual.spec.as_mut().unwrap();
        spec.manual_selector = Some(true);
        spec.selector = Some(LabelSelector {
            match_labels: Some([("app".to_string(), "x".to_string())].into()),
            match_expressions: None,
        });
        manual.prepare_for_create();
        manual.apply_defaults();
        assert_eq!(manual.validate()[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn most_of_the_spec_is_immutable() {
        let old = created("Never");
        let mut new = old.clone();
        new.spec.as_mut().unwrap().parallelism = Some(4);
        new.spec.as_mut().unwrap().active_deadline_seconds = Some(100);
        assert!(new.validate_update(&old).is_empty());
        new.spec.as_mut().unwrap().completions = Some(5);
        assert_eq!(new.validate_update(&old)[0].field, "spec.completions");
        let mut new = old.clone();
        new.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("other".into());
        assert_eq!(new.validate_update(&old)[0].field, "spec.template");
        // Suspended and never started: node selectors may change, images may not.
        let mut old_s = old.clone();
        old_s.spec.as_mut().unwrap().suspend = Some(true);
        let mut new = old_s.clone();
        new.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .node_selector = Some([("zone".to_string(), "a".to_string())].into());
        assert!(new.validate_update(&old_s).is_empty());
    }

    #[test]
    fn cells_follow_print_job() {
        let now = jiff::Timestamp::from_second(1000).unwrap();
        let mut j = created("Never");
        j.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(900).unwrap()));
        j.status = Some(JobStatus {
            succeeded: Some(1),
            start_time: Some(Time(jiff::Timestamp::from_second(910).unwrap())),
            completion_time: Some(Time(jiff::Timestamp::from_second(925).unwrap())),
            conditions: Some(vec![JobCondition {
                type_: "Complete".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let cells = j.cells(now);
        assert_eq!(
            cells[..5],
            [
                json!("pi"),
                json!("Complete"),
                json!("1/1"),
                json!("15s"),
                json!("100s")
            ]
        );
        assert_eq!(cells[7], json!("batch.kubernetes.io/controller-uid=u-1"));
        assert_eq!(cells.len(), Job::columns().len());
        assert_eq!(j.field("status.successful").as_deref(), Some("1"));
        let mut running = created("Never");
        running.spec.as_mut().unwrap().completions = None;
        running.spec.as_mut().unwrap().parallelism = Some(3);
        let cells = running.cells(now);
        assert_eq!(cells[1], json!("Running"));
        assert_eq!(cells[2], json!("0/1 of 3"));
        assert_eq!(cells[3], json!(""));
    }
}

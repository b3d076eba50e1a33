//! CronJobs (batch/v1): upstream's defaults (concurrencyPolicy Allow, not suspended, history
//! limits 3 and 1), validation (the schedule's cron syntax, the time zone, the job template),
//! `generation` on spec changes, the `status` subresource and the `kubectl get` columns.

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, CronJobStatus};
use serde_json::{Value, json};

use crate::errors::FieldError;
use crate::kinds::cron;
use crate::kinds::job::validate_job_spec;
use crate::kinds::podtemplate::{self as tpl, CONTAINERS_DOC, IMAGES_DOC};
use crate::registry::{Column, Kind, Subresource};
use crate::table;

/// Job names are the cron job's name plus an 11-character suffix, and must stay labels.
const MAX_NAME: usize = 52;

impl Kind for CronJob {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "cronjob";
    const SHORT_NAMES: &'static [&'static str] = &["cj"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const SUBRESOURCES: &'static [Subresource] = &[Subresource::Status];
    const TRACKS_GENERATION: bool = true;

    fn prepare_for_create(&mut self) {
        self.status = Some(CronJobStatus::default());
    }

    fn apply_defaults(&mut self) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        spec.concurrency_policy
            .get_or_insert_with(|| "Allow".into());
        spec.suspend.get_or_insert(false);
        spec.successful_jobs_history_limit.get_or_insert(3);
        spec.failed_jobs_history_limit.get_or_insert(1);
        if let Some(job) = spec.job_template.spec.as_mut() {
            tpl::default_template(&mut job.template);
        }
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(name) = self.metadata.name.as_deref()
            && name.len() > MAX_NAME
        {
            errs.push(FieldError::invalid(
                "metadata.name",
                name,
                &format!("must be no more than {MAX_NAME} characters"),
            ));
        }
        match &self.spec {
            None => errs.push(FieldError::required("spec", "")),
            Some(spec) => errs.extend(validate_spec(spec)),
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
            Column::new(
                "Schedule",
                "string",
                "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
            ),
            Column::new(
                "Timezone",
                "string",
                "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones.",
            ),
            Column::new(
                "Suspend",
                "boolean",
                "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.  Defaults to false.",
            ),
            Column::new(
                "Active",
                "integer",
                "A list of pointers to currently running jobs.",
            ),
            Column::new(
                "Last Schedule",
                "string",
                "Information when was the last time the job was successfully scheduled.",
            ),
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
        let job = spec.job_template.spec.clone().unwrap_or_default();
        let (containers, images) = tpl::container_cells(job.template.spec.as_ref());
        let last = match &status.last_schedule_time {
            Some(t) => table::age(Some(t), now),
            None => "<none>".into(),
        };
        let suspend = match spec.suspend {
            Some(true) => "True",
            Some(false) => "False",
            None => "<unset>",
        };
        vec![
            json!(self.metadata.name.clone().unwrap_or_default()),
            json!(spec.schedule),
            json!(spec.time_zone.unwrap_or_else(|| "<none>".into())),
            json!(suspend),
            json!(status.active.map_or(0, |a| a.len())),
            json!(last),
            json!(table::age(self.metadata.creation_timestamp.as_ref(), now)),
            json!(containers),
            json!(images),
            json!(match &job.selector {
                Some(s) => tpl::selector_string(Some(s)),
                None => String::new(),
            }),
        ]
    }
}

/// Upstream's `ValidateCronJobSpec`.
fn validate_spec(spec: &CronJobSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if spec.schedule.is_empty() {
        errs.push(FieldError::required("spec.schedule", ""));
    } else {
        if let Err(e) = cron::parse(&spec.schedule) {
            errs.push(FieldError::invalid("spec.schedule", &spec.schedule, &e));
        }
        if spec.schedule.contains("TZ") {
            errs.push(FieldError::invalid(
                "spec.schedule",
                &spec.schedule,
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            ));
        }
    }
    if let Some(e) = spec.time_zone.as_deref().and_then(validate_time_zone) {
        errs.push(e);
    }
    tpl::non_negative(
        "spec.startingDeadlineSeconds",
        spec.starting_deadline_seconds,
        &mut errs,
    );
    match spec.concurrency_policy.as_deref() {
        None | Some("Allow" | "Forbid" | "Replace") => {}
        Some("") => errs.push(FieldError::required("spec.concurrencyPolicy", "")),
        Some(p) => errs.push(FieldError::not_supported(
            "spec.concurrencyPolicy",
            p,
            &["Allow", "Forbid", "Replace"],
        )),
    }
    for (field, v) in [
        (
            "successfulJobsHistoryLimit",
            spec.successful_jobs_history_limit,
        ),
        ("failedJobsHistoryLimit", spec.failed_jobs_history_limit),
    ] {
        tpl::non_negative(&format!("spec.{field}"), v.map(i64::from), &mut errs);
    }
    let job = spec.job_template.spec.clone().unwrap_or_default();
    errs.extend(validate_job_spec("spec.jobTemplate.spec", &job));
    if let Some(sel) = &job.selector {
        errs.push(FieldError::invalid(
            "spec.jobTemplate.spec.selector",
            tpl::GoSelector(sel),
            "`selector` will be auto-generated",
        ));
    }
    if job.manual_selector == Some(true) {
        errs.push(FieldError::not_supported(
            "spec.jobTemplate.spec.manualSelector",
            "true",
            &["nil", "false"],
        ));
    }
    errs
}

/// Upstream's `validateTimeZone`: an explicit IANA name the time zone database knows.
fn validate_time_zone(tz: &str) -> Option<FieldError> {
    let invalid = |detail: &str| Some(FieldError::invalid("spec.timeZone", tz, detail));
    if tz.is_empty() {
        return invalid("timeZone must be nil or non-empty string");
    }
    for part in tz.split('/') {
        let ok_chars = !part.is_empty()
            && part.len() <= 14
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
        if part == "." || part == ".." || part.starts_with('-') || !ok_chars {
            return invalid(&format!("unknown time zone {tz}"));
        }
    }
    if tz.eq_ignore_ascii_case("local") {
        return invalid(
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
        );
    }
    if tz != "UTC" && jiff::tz::db().get(tz).is_err() {
        return invalid(&format!("unknown time zone {tz}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobSpec, JobTemplateSpec};
    use k8s_openapi::api::core::v1::{Container, ObjectReference, PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};

    fn cj(schedule: &str) -> CronJob {
        CronJob {
            metadata: ObjectMeta {
                name: Some("hello".into()),
                ..Default::default()
            },
            spec: Some(CronJobSpec {
                schedule: schedule.into(),
                job_template: JobTemplateSpec {
                    metadata: None,
                    spec: Some(JobSpec {
                        template: PodTemplateSpec {
                            metadata: None,
                            spec: Some(PodSpec {
                                restart_policy: Some("OnFailure".into()),
                                containers: vec![Container {
                                    name: "hello".into(),
                                    image: Some("miniorch/demo:1".into()),
                                    ..Default::default()
                                }],
                                ..Default::default()
                            }),
                        },
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn fields(c: &CronJob) -> Vec<String> {
        c.validate().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn defaults_as_upstream() {
        let mut c = cj("*/1 * * * *");
        c.apply_defaults();
        let s = c.spec.as_ref().unwrap();
        assert_eq!(s.concurrency_policy.as_deref(), Some("Allow"));
        assert_eq!(s.suspend, Some(false));
        assert_eq!(s.successful_jobs_history_limit, Some(3));
        assert_eq!(s.failed_jobs_history_limit, Some(1));
        let pod = s
            .job_template
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirst"));
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(fields(&cj("not a schedule")), vec!["spec.schedule"]);
        assert_eq!(
            cj("* * * *").validate()[0].message,
            "Invalid value: \"* * * *\": expected exactly 5 fields, found 4: [* * * *]"
        );
        assert_eq!(fields(&cj("")), vec!["spec.schedule"]);
        assert_eq!(fields(&cj("CRON_TZ=UTC 0 * * * *")), vec!["spec.schedule"]);
        for (tz, ok) in [
            ("Europe/Berlin", true),
            ("UTC", true),
            ("America/Argentina/Buenos_Aires", true),
            ("Mars/Olympus", false),
            ("Local", false),
            ("", false),
            ("../etc", false),
        ] {
            let mut c = cj("0 * * * *");
            c.spec.as_mut().unwrap().time_zone = Some(tz.into());
            assert_eq!(c.validate().is_empty(), ok, "{tz}: {:?}", c.validate());
        }
        let mut c = cj("@hourly");
        c.spec.as_mut().unwrap().concurrency_policy = Some("Sometimes".into());
        assert_eq!(fields(&c), vec!["spec.concurrencyPolicy"]);
        let mut c = cj("@hourly");
        c.spec
            .as_mut()
            .unwrap()
            .job_template
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .restart_policy = Some("Always".into());
        assert_eq!(
            fields(&c),
            vec!["spec.jobTemplate.spec.template.spec.restartPolicy"]
        );
        let mut c = cj("@hourly");
        c.spec
            .as_mut()
            .unwrap()
            .job_template
            .spec
            .as_mut()
            .unwrap()
            .selector = Some(LabelSelector::default());
        assert_eq!(fields(&c), vec!["spec.jobTemplate.spec.selector"]);
        let mut c = cj("@hourly");
        c.metadata.name = Some("x".repeat(53));
        assert_eq!(fields(&c), vec!["metadata.name"]);
    }

    #[test]
    fn cells_follow_print_cron_job() {
        let now = jiff::Timestamp::from_second(1000).unwrap();
        let mut c = cj("*/5 * * * *");
        c.apply_defaults();
        c.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(400).unwrap()));
        let cells = c.cells(now);
        assert_eq!(
            cells[..7],
            [
                json!("hello"),
                json!("*/5 * * * *"),
                json!("<none>"),
                json!("False"),
                json!(0),
                json!("<none>"),
                json!("10m")
            ]
        );
        c.spec.as_mut().unwrap().time_zone = Some("Etc/UTC".into());
        c.status = Some(CronJobStatus {
            active: Some(vec![ObjectReference::default()]),
            last_schedule_time: Some(Time(jiff::Timestamp::from_second(940).unwrap())),
            ..Default::default()
        });
        let cells = c.cells(now);
        assert_eq!(cells[2], json!("Etc/UTC"));
        assert_eq!(cells[4], json!(1));
        assert_eq!(cells[5], json!("60s"));
        assert_eq!(cells.len(), CronJob::columns().len());
    }
}

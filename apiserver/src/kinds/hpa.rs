//! HorizontalPodAutoscalers, stored as autoscaling/v2 (as upstream) and served in both v2 and
//! v1. The v2 kind carries the strategy (defaults: minReplicas 1, an 80% CPU target when no
//! metric is given, the scale-up/scale-down behavior rules; validation; status via /status;
//! the `kubectl get hpa` columns). [`V1`] converts between the versions as upstream's
//! conversion does: v1's `targetCPUUtilizationPercentage` is v2's Resource cpu Utilization
//! metric, and what v1 cannot say (other metrics, their status, conditions, behavior) rides in
//! `autoscaling.alpha.kubernetes.io/*` annotations, so a v1 round trip loses nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::{v1, v2};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{Map, Value, json};

use crate::errors::{ApiError, ApiResult, FieldError};
use crate::kinds::convert::Conversion;
use crate::registry::{Column, Kind, Subresource};
use crate::table;

const METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/metrics";
const CURRENT_METRICS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const CONDITIONS_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/conditions";
const BEHAVIOR_ANNOTATION: &str = "autoscaling.alpha.kubernetes.io/behavior";
const ROUND_TRIP_ANNOTATIONS: [&str; 4] = [
    METRICS_ANNOTATION,
    CURRENT_METRICS_ANNOTATION,
    CONDITIONS_ANNOTATION,
    BEHAVIOR_ANNOTATION,
];

/// The CPU target when none is given.
const DEFAULT_CPU_UTILIZATION: i32 = 80;
const MAX_PERIOD_SECONDS: i32 = 1800;
const MAX_STABILIZATION_WINDOW_SECONDS: i32 = 3600;

type Hpa = v2::HorizontalPodAutoscaler;

impl Kind for Hpa {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "horizontalpodautoscaler";
    const SHORT_NAMES: &'static [&'static str] = &["hpa"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const SUBRESOURCES: &'static [Subresource] = &[Subresource::Status];

    fn prepare_for_create(&mut self) {
        self.status = Some(v2::HorizontalPodAutoscalerStatus::default());
    }

    fn apply_defaults(&mut self) {
        // v2 round-trips without these; only v1 uses them (upstream drops them likewise).
        if let Some(a) = self.metadata.annotations.as_mut() {
            for k in ROUND_TRIP_ANNOTATIONS {
                a.remove(k);
            }
            if a.is_empty() {
                self.metadata.annotations = None;
            }
        }
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        spec.min_replicas.get_or_insert(1);
        if spec.metrics.as_ref().is_none_or(Vec::is_empty) {
            spec.metrics = Some(vec![cpu_utilization(DEFAULT_CPU_UTILIZATION)]);
        }
        if let Some(b) = spec.behavior.as_mut() {
            b.scale_up = Some(merge_rules(
                b.scale_up.take(),
                v2::HPAScalingRules {
                    stabilization_window_seconds: Some(0),
                    select_policy: Some("Max".into()),
                    policies: Some(vec![policy("Pods", 4, 15), policy("Percent", 100, 15)]),
                    tolerance: None,
                },
            ));
            b.scale_down = Some(merge_rules(
                b.scale_down.take(),
                v2::HPAScalingRules {
                    // Left to the controller's --horizontal-pod-autoscaler-downscale-stabilization.
                    stabilization_window_seconds: None,
                    select_policy: Some("Max".into()),
                    policies: Some(vec![policy("Percent", 100, 15)]),
                    tolerance: None,
                },
            ));
        }
    }

    fn validate(&self) -> Vec<FieldError> {
        match &self.spec {
            None => vec![FieldError::required("spec", "")],
            Some(spec) => validate_spec(spec),
        }
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

    fn columns() -> Vec<Column> {
        vec![
            Column::name_column(),
            Column::new(
                "Reference",
                "string",
                "scaleTargetRef points to the target resource to scale, and is used to the pods for which metrics should be collected, as well as to actually change the replica count.",
            ),
            Column::new(
                "Targets",
                "string",
                "metrics contains the specifications for which to use to calculate the desired replica count (the maximum replica count across all metrics will be used).",
            ),
            Column::new(
                "MinPods",
                "string",
                "minReplicas is the lower limit for the number of replicas to which the autoscaler can scale down.",
            ),
            Column::new(
                "MaxPods",
                "string",
                "maxReplicas is the upper limit for the number of replicas to which the autoscaler can scale up.",
            ),
            Column::new(
                "Replicas",
                "string",
                "currentReplicas is current number of replicas of pods managed by this autoscaler, as last seen by the autoscaler.",
            ),
            Column::age_column(),
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let status = self.status.clone().unwrap_or_default();
        vec![
            json!(self.metadata.name.clone().unwrap_or_default()),
            json!(format!(
                "{}/{}",
                spec.scale_target_ref.kind, spec.scale_target_ref.name
            )),
            json!(targets(
                spec.metrics.as_deref().unwrap_or(&[]),
                status.current_metrics.as_deref().unwrap_or(&[])
            )),
            json!(
                spec.min_replicas
                    .map_or("<unset>".to_string(), |m| m.to_string())
            ),
            json!(spec.max_replicas),
            json!(status.current_replicas.unwrap_or(0)),
            json!(table::age(self.metadata.creation_timestamp.as_ref(), now)),
        ]
    }
}

fn cpu_utilization(percent: i32) -> v2::MetricSpec {
    v2::MetricSpec {
        type_: "Resource".into(),
        resource: Some(v2::ResourceMetricSource {
            name: "cpu".into(),
            target: v2::MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(percent),
                ..Default::default()
            },
        }),
        ..Default::default()
    }
}

fn policy(type_: &str, value: i32, period_seconds: i32) -> v2::HPAScalingPolicy {
    v2::HPAScalingPolicy {
        type_: type_.into(),
        value,
        period_seconds,
    }
}

/// What the client set wins; the rest comes from the defaults (upstream's copyHPAScalingRules).
fn merge_rules(
    from: Option<v2::HPAScalingRules>,
    defaults: v2::HPAScalingRules,
) -> v2::HPAScalingRules {
    let Some(from) = from else {
        return defaults;
    };
    v2::HPAScalingRules {
        select_policy: from.select_policy.or(defaults.select_policy),
        stabilization_window_seconds: from
            .stabilization_window_seconds
            .or(defaults.stabilization_window_seconds),
        policies: from.policies.or(defaults.policies),
        tolerance: from.tolerance.or(defaults.tolerance),
    }
}

/// The Targets cell, as upstream's formatHPAMetrics: up to two, then `+ N more...`.
fn targets(specs: &[v2::MetricSpec], statuses: &[v2::MetricStatus]) -> String {
    if specs.is_empty() {
        return "<none>".into();
    }
    let q = |q: Option<&Quantity>| q.map_or("<unknown>".to_string(), |q| q.0.clone());
    let pct = |p: Option<i32>| p.map(|p| format!("{p}%"));
    let list: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let status = statuses.get(i);
            match spec.type_.as_str() {
                "External" => {
                    let Some(src) = &spec.external else {
                        return "<unknown type>".into();
                    };
                    let current = status.and_then(|s| s.external.as_ref()).map(|s| &s.current);
                    match &src.target.average_value {
                        Some(avg) => format!(
                            "{}/{} (avg)",
                            q(current.and_then(|c| c.average_value.as_ref())),
                            avg.0
                        ),
                        None => format!(
                            "{}/{}",
                            q(current.and_then(|c| c.value.as_ref())),
                            q(src.target.value.as_ref())
                        ),
                    }
                }
                "Pods" => {
                    let Some(src) = &spec.pods else {
                        return "<unknown type>".into();
                    };
                    let current = status.and_then(|s| s.pods.as_ref());
                    format!(
                        "{}/{}",
                        q(current.and_then(|c| c.current.average_value.as_ref())),
                        q(src.target.average_value.as_ref())
                    )
                }
                "Object" => {
                    let Some(src) = &spec.object else {
                        return "<unknown type>".into();
                    };
                    let current = status.and_then(|s| s.object.as_ref()).map(|s| &s.current);
                    match &src.target.average_value {
                        Some(avg) => format!(
                            "{}/{} (avg)",
                            q(current.and_then(|c| c.average_value.as_ref())),
                            avg.0
                        ),
                        None => format!(
                            "{}/{}",
                            q(current.and_then(|c| c.value.as_ref())),
                            q(src.target.value.as_ref())
                        ),
                    }
                }
                "Resource" => {
                    let Some(src) = &spec.resource else {
                        return "<unknown type>".into();
                    };
                    let current = status.and_then(|s| s.resource.as_ref()).map(|s| &s.current);
                    match &src.target.average_value {
                        Some(avg) => format!(
                            "{}: {}/{}",
                            src.name,
                            q(current.and_then(|c| c.average_value.as_ref())),
                            avg.0
                        ),
                        None => format!(
                            "{}: {}/{}",
                            src.name,
                            pct(current.and_then(|c| c.average_utilization))
                                .unwrap_or_else(|| "<unknown>".into()),
                            pct(src.target.average_utilization).unwrap_or_else(|| "<auto>".into())
                        ),
                    }
                }
                "ContainerResource" => {
                    let Some(src) = &spec.container_resource else {
                        return "<unknown type>".into();
                    };
                    let current = status
                        .and_then(|s| s.container_resource.as_ref())
                        .map(|s| &s.current);
                    match &src.target.average_value {
                        Some(avg) => format!(
                            "{}/{}",
                            q(current.and_then(|c| c.average_value.as_ref())),
                            avg.0
                        ),
                        None => format!(
                            "{}/{}",
                            pct(current.and_then(|c| c.average_utilization))
                                .unwrap_or_else(|| "<unknown>".into()),
                            pct(src.target.average_utilization).unwrap_or_else(|| "<auto>".into())
                        ),
                    }
                }
                _ => "<unknown type>".into(),
            }
        })
        .collect();
    if list.len() > 2 {
        format!("{} + {} more...", list[..2].join(", "), list.len() - 2)
    } else {
        list.join(", ")
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

/// Upstream's `validateHorizontalPodAutoscalerSpec`.
fn validate_spec(spec: &v2::HorizontalPodAutoscalerSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(min) = spec.min_replicas.filter(|m| *m < 1) {
        errs.push(FieldError::invalid(
            "spec.minReplicas",
            min,
            "must be greater than or equal to 1",
        ));
    }
    if spec.max_replicas < 1 {
        errs.push(FieldError::invalid(
            "spec.maxReplicas",
            spec.max_replicas,
            "must be greater than 0",
        ));
    }
    if spec.min_replicas.is_some_and(|m| spec.max_replicas < m) {
        errs.push(FieldError::invalid(
            "spec.maxReplicas",
            spec.max_replicas,
            "must be greater than or equal to `minReplicas`",
        ));
    }
    let r = &spec.scale_target_ref;
    let refs = object_ref("spec.scaleTargetRef", &r.kind, &r.name);
    if !refs.is_empty() {
        errs.extend(refs);
        return errs;
    }
    let metric_errs: Vec<FieldError> = spec
        .metrics
        .iter()
        .flatten()
        .enumerate()
        .flat_map(|(i, m)| validate_metric(&format!("spec.metrics[{i}]"), m))
        .collect();
    if !metric_errs.is_empty() {
        errs.extend(metric_errs);
        return errs;
    }
    if let Some(b) = &spec.behavior {
        for (name, rules) in [("scaleUp", &b.scale_up), ("scaleDown", &b.scale_down)] {
            if let Some(rules) = rules {
                validate_rules(&format!("spec.behavior.{name}"), rules, &mut errs);
            }
        }
    }
    errs
}

/// A `CrossVersionObjectReference`: kind and name, each a valid path segment.
fn object_ref(path: &str, kind: &str, name: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (field, v) in [("kind", kind), ("name", name)] {
        let f = format!("{path}.{field}");
        if v.is_empty() {
            errs.push(FieldError::required(f, ""));
        } else if v == "." || v == ".." {
            errs.push(FieldError::invalid(f, v, &format!("may not be '{v}'")));
        } else if let Some(c) = ['/', '%'].into_iter().find(|c| v.contains(*c)) {
            errs.push(FieldError::invalid(f, v, &format!("may not contain '{c}'")));
        }
    }
    errs
}

fn validate_metric(path: &str, m: &v2::MetricSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let types = [
        "ContainerResource",
        "External",
        "Object",
        "Pods",
        "Resource",
    ];
    if m.type_.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.type"),
            "must specify a metric source type",
        ));
    } else if !types.contains(&m.type_.as_str()) {
        errs.push(FieldError::not_supported(
            format!("{path}.type"),
            &m.type_,
            &types,
        ));
    }
    let present: Vec<&str> = [
        ("containerResource", m.container_resource.is_some()),
        ("external", m.external.is_some()),
        ("object", m.object.is_some()),
        ("pods", m.pods.is_some()),
        ("resource", m.resource.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, p)| p.then_some(n))
    .collect();
    let mut expected = m.type_.clone();
    if let Some(first) = expected.get_mut(..1) {
        first.make_ascii_lowercase();
    }
    if types.contains(&m.type_.as_str()) && !present.contains(&expected.as_str()) {
        errs.push(FieldError::required(
            format!("{path}.{expected}"),
            "must populate information for the given metric source",
        ));
    }
    for other in present.iter().filter(|p| **p != expected) {
        errs.push(FieldError::forbidden(
            format!("{path}.{other}"),
            "must populate the given metric source only",
        ));
    }
    if let Some(r) = &m.resource {
        let p = format!("{path}.resource");
        if r.name.is_empty() {
            errs.push(FieldError::required(
                format!("{p}.name"),
                "must specify a resource name",
            ));
        }
        resource_target(&p, &r.target, &mut errs);
    }
    if let Some(r) = &m.container_resource {
        let p = format!("{path}.containerResource");
        if r.name.is_empty() {
            errs.push(FieldError::required(
                format!("{p}.name"),
                "must specify a resource name",
            ));
        }
        if r.container.is_empty() {
            errs.push(FieldError::required(
                format!("{p}.container"),
                "must specify a container",
            ));
        }
        resource_target(&p, &r.target, &mut errs);
    }
    if let Some(s) = &m.pods {
        let p = format!("{path}.pods");
        metric_name(&p, &s.metric, &mut errs);
        metric_target(&format!("{p}.target"), &s.target, &mut errs);
        if s.target.average_value.is_none() {
            errs.push(FieldError::required(
                format!("{p}.target.averageValue"),
                "must specify a positive target averageValue",
            ));
        }
    }
    if let Some(s) = &m.object {
        let p = format!("{path}.object");
        errs.extend(object_ref(
            &format!("{p}.describedObject"),
            &s.described_object.kind,
            &s.described_object.name,
        ));
        metric_name(&p, &s.metric, &mut errs);
        metric_target(&format!("{p}.target"), &s.target, &mut errs);
        if s.target.value.is_none() && s.target.average_value.is_none() {
            errs.push(FieldError::required(
                format!("{p}.target.averageValue"),
                "must set either a target value or averageValue",
            ));
        }
    }
    if let Some(s) = &m.external {
        let p = format!("{path}.external");
        metric_name(&p, &s.metric, &mut errs);
        metric_target(&format!("{p}.target"), &s.target, &mut errs);
        match (&s.target.value, &s.target.average_value) {
            (None, None) => errs.push(FieldError::required(
                format!("{p}.target.averageValue"),
                "must set either a target value for metric or a per-pod target",
            )),
            (Some(_), Some(_)) => errs.push(FieldError::forbidden(
                format!("{p}.target.value"),
                "may not set both a target value for metric and a per-pod target",
            )),
            _ => {}
        }
    }
    errs
}

fn resource_target(path: &str, t: &v2::MetricTarget, errs: &mut Vec<FieldError>) {
    metric_target(&format!("{path}.target"), t, errs);
    match (t.average_utilization, &t.average_value) {
        (None, None) => errs.push(FieldError::required(
            format!("{path}.target.averageUtilization"),
            "must set either a target raw value or a target utilization",
        )),
        (Some(_), Some(_)) => errs.push(FieldError::forbidden(
            format!("{path}.target.averageValue"),
            "may not set both a target raw value and a target utilization",
        )),
        _ => {}
    }
}

fn metric_name(path: &str, m: &v2::MetricIdentifier, errs: &mut Vec<FieldError>) {
    if m.name.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.metric.name"),
            "must specify a metric name",
        ));
    }
}

fn metric_target(path: &str, t: &v2::MetricTarget, errs: &mut Vec<FieldError>) {
    if t.type_.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.type"),
            "must specify a metric target type",
        ));
    } else if !matches!(t.type_.as_str(), "Utilization" | "Value" | "AverageValue") {
        errs.push(FieldError::invalid(
            format!("{path}.type"),
            &t.type_,
            "must be either Utilization, Value, or AverageValue",
        ));
    }
    for (field, q) in [("value", &t.value), ("averageValue", &t.average_value)] {
        if let Some(q) = q {
            match miniorch_api::quantity::milli_value(q) {
                Ok(v) if v > 0 => {}
                Ok(_) => errs.push(FieldError::invalid(
                    format!("{path}.{field}"),
                    &q.0,
                    "must be positive",
                )),
                Err(e) => errs.push(FieldError::invalid(
                    format!("{path}.{field}"),
                    &q.0,
                    &e.to_string(),
                )),
            }
        }
    }
    if let Some(u) = t.average_utilization.filter(|u| *u < 1) {
        errs.push(FieldError::invalid(
            format!("{path}.averageUtilization"),
            u,
            "must be greater than 0",
        ));
    }
}

fn validate_rules(path: &str, rules: &v2::HPAScalingRules, errs: &mut Vec<FieldError>) {
    if let Some(w) = rules.stabilization_window_seconds {
        if w < 0 {
            errs.push(FieldError::invalid(
                format!("{path}.stabilizationWindowSeconds"),
                w,
                "must be greater than or equal to zero",
            ));
        } else if w > MAX_STABILIZATION_WINDOW_SECONDS {
            errs.push(FieldError::invalid(
                format!("{path}.stabilizationWindowSeconds"),
                w,
                &format!("must be less than or equal to {MAX_STABILIZATION_WINDOW_SECONDS}"),
            ));
        }
    }
    if let Some(p) = rules.select_policy.as_deref()
        && !matches!(p, "Max" | "Min" | "Disabled")
    {
        errs.push(FieldError::not_supported(
            format!("{path}.selectPolicy"),
            p,
            &["Disabled", "Max", "Min"],
        ));
    }
    let policies = rules.policies.as_deref().unwrap_or(&[]);
    if policies.is_empty() {
        errs.push(FieldError::required(
            format!("{path}.policies"),
            "must specify at least one Policy",
        ));
    }
    for (i, p) in policies.iter().enumerate() {
        let f = format!("{path}.policies[{i}]");
        if !matches!(p.type_.as_str(), "Pods" | "Percent") {
            errs.push(FieldError::not_supported(
                format!("{f}.type"),
                &p.type_,
                &["Percent", "Pods"],
            ));
        }
        if p.value <= 0 {
            errs.push(FieldError::invalid(
                format!("{f}.value"),
                p.value,
                "must be greater than zero",
            ));
        }
        if p.period_seconds <= 0 {
            errs.push(FieldError::invalid(
                format!("{f}.periodSeconds"),
                p.period_seconds,
                "must be greater than zero",
            ));
        } else if p.period_seconds > MAX_PERIOD_SECONDS {
            errs.push(FieldError::invalid(
                format!("{f}.periodSeconds"),
                p.period_seconds,
                &format!("must be less than or equal to {MAX_PERIOD_SECONDS}"),
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// autoscaling/v1

/// autoscaling/v1, converted to and from the stored v2 (upstream's v1 conversion).
pub struct V1;

impl Conversion for V1 {
    type Served = v1::HorizontalPodAutoscaler;
    type Stored = Hpa;

    fn to_stored(served: v1::HorizontalPodAutoscaler) -> ApiResult<Hpa> {
        to_v2(served)
    }

    fn from_stored(stored: Hpa) -> ApiResult<v1::HorizontalPodAutoscaler> {
        to_v1(stored)
    }
}

fn is_cpu_utilization(m: &v2::MetricSpec) -> bool {
    m.type_ == "Resource"
        && m.resource
            .as_ref()
            .is_some_and(|r| r.name == "cpu" && r.target.average_utilization.is_some())
}

fn encode<T: serde::Serialize>(v: &T) -> ApiResult<String> {
    serde_json::to_string(v).map_err(|e| ApiError::internal(format!("cannot encode: {e}")))
}

/// v2 → v1: the CPU target becomes targetCPUUtilizationPercentage; the rest goes into
/// annotations.
fn to_v1(hpa: Hpa) -> ApiResult<v1::HorizontalPodAutoscaler> {
    let mut metadata = hpa.metadata;
    let spec = hpa.spec.unwrap_or_default();
    let status = hpa.status;
    let metrics = spec.metrics.clone().unwrap_or_default();
    let others: Vec<Value> = metrics
        .iter()
        .filter(|m| !is_cpu_utilization(m))
        .map(metric_spec_to_v1)
        .collect::<ApiResult<_>>()?;
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    if !others.is_empty() {
        annotations.insert(METRICS_ANNOTATION.into(), encode(&others)?);
    }
    if let Some(current) = status
        .as_ref()
        .and_then(|s| s.current_metrics.as_ref())
        .filter(|c| !c.is_empty())
    {
        let v1: Vec<Value> = current
            .iter()
            .map(metric_status_to_v1)
            .collect::<ApiResult<_>>()?;
        annotations.insert(CURRENT_METRICS_ANNOTATION.into(), encode(&v1)?);
    }
    if let Some(conditions) = status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .filter(|c| !c.is_empty())
    {
        annotations.insert(CONDITIONS_ANNOTATION.into(), encode(conditions)?);
    }
    if let Some(behavior) = &spec.behavior {
        annotations.insert(BEHAVIOR_ANNOTATION.into(), encode(behavior)?);
    }
    if !annotations.is_empty() {
        metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .extend(annotations);
    }
    let target_cpu = metrics
        .iter()
        .find(|m| m.type_ == "Resource" && m.resource.as_ref().is_some_and(|r| r.name == "cpu"))
        .and_then(|m| m.resource.as_ref())
        .and_then(|r| r.target.average_utilization);
    let r = spec.scale_target_ref;
    Ok(v1::HorizontalPodAutoscaler {
        metadata,
        spec: Some(v1::HorizontalPodAutoscalerSpec {
            max_replicas: spec.max_replicas,
            min_replicas: spec.min_replicas,
            scale_target_ref: v1::CrossVersionObjectReference {
                api_version: r.api_version,
                kind: r.kind,
                name: r.name,
            },
            target_cpu_utilization_percentage: target_cpu,
        }),
        status: status.map(|s| v1::HorizontalPodAutoscalerStatus {
            current_cpu_utilization_percentage: s
                .current_metrics
                .iter()
                .flatten()
                .filter(|m| m.type_ == "Resource")
                .filter_map(|m| m.resource.as_ref())
                .find(|r| r.name == "cpu")
                .and_then(|r| r.current.average_utilization),
            current_replicas: s.current_replicas.unwrap_or(0),
            desired_replicas: s.desired_replicas,
            last_scale_time: s.last_scale_time,
            observed_generation: s.observed_generation,
        }),
    })
}

/// v1 → v2: the reverse, reading (and removing) the annotations.
fn to_v2(hpa: v1::HorizontalPodAutoscaler) -> ApiResult<Hpa> {
    let mut metadata = hpa.metadata;
    let mut annotations = metadata.annotations.take().unwrap_or_default();
    let mut take = |key: &str| annotations.remove(key);
    let bad = |key: &str, e: &dyn std::fmt::Display| {
        ApiError::bad_request(format!("the annotation {key} cannot be decoded: {e}"))
    };
    let spec = hpa.spec.unwrap_or_default();
    let mut metrics: Vec<v2::MetricSpec> = Vec::new();
    if let Some(text) = take(METRICS_ANNOTATION) {
        let list: Vec<Value> =
            serde_json::from_str(&text).map_err(|e| bad(METRICS_ANNOTATION, &e))?;
        for m in list {
            metrics.push(metric_spec_from_v1(m).map_err(|e| bad(METRICS_ANNOTATION, &e))?);
        }
    }
    if let Some(cpu) = spec.target_cpu_utilization_percentage {
        metrics.push(cpu_utilization(cpu));
    }
    if metrics.is_empty() {
        metrics.push(cpu_utilization(DEFAULT_CPU_UTILIZATION));
    }
    let behavior = match take(BEHAVIOR_ANNOTATION) {
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| bad(BEHAVIOR_ANNOTATION, &e))?),
        None => None,
    };
    let current_metrics = match take(CURRENT_METRICS_ANNOTATION) {
        Some(text) => {
            let list: Vec<Value> =
                serde_json::from_str(&text).map_err(|e| bad(CURRENT_METRICS_ANNOTATION, &e))?;
            let mut out = Vec::new();
            for m in list {
                out.push(
                    metric_status_from_v1(m).map_err(|e| bad(CURRENT_METRICS_ANNOTATION, &e))?,
                );
            }
            Some(out)
        }
        None => hpa
            .status
            .as_ref()
            .and_then(|s| s.current_cpu_utilization_percentage)
            .map(|u| {
                vec![v2::MetricStatus {
                    type_: "Resource".into(),
                    resource: Some(v2::ResourceMetricStatus {
                        name: "cpu".into(),
                        current: v2::MetricValueStatus {
                            average_utilization: Some(u),
                            ..Default::default()
                        },
                    }),
                    ..Default::default()
                }]
            }),
    };
    let conditions = match take(CONDITIONS_ANNOTATION) {
        Some(text) => {
            Some(serde_json::from_str(&text).map_err(|e| bad(CONDITIONS_ANNOTATION, &e))?)
        }
        None => None,
    };
    if !annotations.is_empty() {
        metadata.annotations = Some(annotations);
    }
    let r = spec.scale_target_ref;
    Ok(Hpa {
        metadata,
        spec: Some(v2::HorizontalPodAutoscalerSpec {
            behavior,
            max_replicas: spec.max_replicas,
            metrics: Some(metrics),
            min_replicas: spec.min_replicas,
            scale_target_ref: v2::CrossVersionObjectReference {
                api_version: r.api_version,
                kind: r.kind,
                name: r.name,
            },
        }),
        status: hpa.status.map(|s| v2::HorizontalPodAutoscalerStatus {
            conditions,
            current_metrics,
            current_replicas: Some(s.current_replicas),
            desired_replicas: s.desired_replicas,
            last_scale_time: s.last_scale_time,
            observed_generation: s.observed_generation,
        }),
    })
}

// The v1 annotation format of metrics is the older flat one (`targetAverageUtilization`,
// `metricName`...); these move fields between it and v2's nested `target`/`metric`/`current`.

/// The member named `key` of an object, or null.
fn at<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

/// An object of the members that are not null.
fn obj(pairs: Vec<(&str, Value)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.to_string(), v))
            .collect::<Map<String, Value>>(),
    )
}

/// A quantity v1 requires: what v2 has, or zero.
fn or_zero(v: &Value) -> Value {
    if v.is_null() { json!("0") } else { v.clone() }
}

fn source_key(type_: &str) -> String {
    let mut k = type_.to_string();
    if let Some(first) = k.get_mut(..1) {
        first.make_ascii_lowercase();
    }
    k
}

fn metric_spec_to_v1(m: &v2::MetricSpec) -> ApiResult<Value> {
    let v = serde_json::to_value(m).map_err(|e| ApiError::internal(e.to_string()))?;
    let key = source_key(&m.type_);
    let src = at(&v, &key);
    let target = at(src, "target");
    let metric = at(src, "metric");
    let converted = match m.type_.as_str() {
        "Resource" | "ContainerResource" => obj(vec![
            ("name", at(src, "name").clone()),
            ("container", at(src, "container").clone()),
            (
                "targetAverageUtilization",
                at(target, "averageUtilization").clone(),
            ),
            ("targetAverageValue", at(target, "averageValue").clone()),
        ]),
        "Pods" => obj(vec![
            ("metricName", at(metric, "name").clone()),
            ("selector", at(metric, "selector").clone()),
            ("targetAverageValue", or_zero(at(target, "averageValue"))),
        ]),
        "Object" => obj(vec![
            ("target", at(src, "describedObject").clone()),
            ("metricName", at(metric, "name").clone()),
            ("selector", at(metric, "selector").clone()),
            ("targetValue", or_zero(at(target, "value"))),
            ("averageValue", at(target, "averageValue").clone()),
        ]),
        "External" => obj(vec![
            ("metricName", at(metric, "name").clone()),
            ("metricSelector", at(metric, "selector").clone()),
            ("targetValue", at(target, "value").clone()),
            ("targetAverageValue", at(target, "averageValue").clone()),
        ]),
        _ => src.clone(),
    };
    Ok(obj(vec![
        ("type", json!(m.type_)),
        (key.as_str(), converted),
    ]))
}

fn metric_spec_from_v1(v: Value) -> Result<v2::MetricSpec, serde_json::Error> {
    let type_ = at(&v, "type").as_str().unwrap_or("").to_string();
    let key = source_key(&type_);
    let src = at(&v, &key);
    let metric = || {
        obj(vec![
            ("name", at(src, "metricName").clone()),
            ("selector", at(src, "selector").clone()),
        ])
    };
    let converted = match type_.as_str() {
        "Resource" | "ContainerResource" => {
            let utilization = at(src, "targetAverageUtilization").clone();
            let kind = if utilization.is_null() {
                "AverageValue"
            } else {
                "Utilization"
            };
            obj(vec![
                ("name", at(src, "name").clone()),
                ("container", at(src, "container").clone()),
                (
                    "target",
                    obj(vec![
                        ("type", json!(kind)),
                        ("averageUtilization", utilization),
                        ("averageValue", at(src, "targetAverageValue").clone()),
                    ]),
                ),
            ])
        }
        "Pods" => obj(vec![
            ("metric", metric()),
            (
                "target",
                obj(vec![
                    ("type", json!("AverageValue")),
                    ("averageValue", at(src, "targetAverageValue").clone()),
                ]),
            ),
        ]),
        "Object" => {
            let avg = at(src, "averageValue").clone();
            let kind = if avg.is_null() {
                "Value"
            } else {
                "AverageValue"
            };
            obj(vec![
                ("describedObject", at(src, "target").clone()),
                ("metric", metric()),
                (
                    "target",
                    obj(vec![
                        ("type", json!(kind)),
                        ("value", at(src, "targetValue").clone()),
                        ("averageValue", avg),
                    ]),
                ),
            ])
        }
        "External" => {
            let value = at(src, "targetValue").clone();
            let kind = if value.is_null() {
                "AverageValue"
            } else {
                "Value"
            };
            obj(vec![
                (
                    "metric",
                    obj(vec![
                        ("name", at(src, "metricName").clone()),
                        ("selector", at(src, "metricSelector").clone()),
                    ]),
                ),
                (
                    "target",
                    obj(vec![
                        ("type", json!(kind)),
                        ("value", value),
                        ("averageValue", at(src, "targetAverageValue").clone()),
                    ]),
                ),
            ])
        }
        _ => src.clone(),
    };
    serde_json::from_value(obj(vec![("type", json!(type_)), (key.as_str(), converted)]))
}

fn metric_status_to_v1(m: &v2::MetricStatus) -> ApiResult<Value> {
    let v = serde_json::to_value(m).map_err(|e| ApiError::internal(e.to_string()))?;
    let key = source_key(&m.type_);
    let src = at(&v, &key);
    let current = at(src, "current");
    let metric = at(src, "metric");
    let converted = match m.type_.as_str() {
        "Resource" | "ContainerResource" => obj(vec![
            ("name", at(src, "name").clone()),
            ("container", at(src, "container").clone()),
            (
                "currentAverageUtilization",
                at(current, "averageUtilization").clone(),
            ),
            ("currentAverageValue", or_zero(at(current, "averageValue"))),
        ]),
        "Pods" => obj(vec![
            ("metricName", at(metric, "name").clone()),
            ("selector", at(metric, "selector").clone()),
            ("currentAverageValue", or_zero(at(current, "averageValue"))),
        ]),
        "Object" => obj(vec![
            ("target", at(src, "describedObject").clone()),
            ("metricName", at(metric, "name").clone()),
            ("selector", at(metric, "selector").clone()),
            ("currentValue", or_zero(at(current, "value"))),
            ("averageValue", at(current, "averageValue").clone()),
        ]),
        "External" => obj(vec![
            ("metricName", at(metric, "name").clone()),
            ("metricSelector", at(metric, "selector").clone()),
            ("currentValue", or_zero(at(current, "value"))),
            ("currentAverageValue", at(current, "averageValue").clone()),
        ]),
        _ => src.clone(),
    };
    Ok(obj(vec![
        ("type", json!(m.type_)),
        (key.as_str(), converted),
    ]))
}

fn metric_status_from_v1(v: Value) -> Result<v2::MetricStatus, serde_json::Error> {
    let type_ = at(&v, "type").as_str().unwrap_or("").to_string();
    let key = source_key(&type_);
    let src = at(&v, &key);
    let converted = match type_.as_str() {
        "Resource" | "ContainerResource" => obj(vec![
            ("name", at(src, "name").clone()),
            ("container", at(src, "container").clone()),
            (
                "current",
                obj(vec![
                    (
                        "averageUtilization",
                        at(src, "currentAverageUtilization").clone(),
                    ),
                    ("averageValue", at(src, "currentAverageValue").clone()),
                ]),
            ),
        ]),
        "Pods" => obj(vec![
            (
                "metric",
                obj(vec![
                    ("name", at(src, "metricName").clone()),
                    ("selector", at(src, "selector").clone()),
                ]),
            ),
            (
                "current",
                obj(vec![(
                    "averageValue",
                    at(src, "currentAverageValue").clone(),
                )]),
            ),
        ]),
        "Object" => obj(vec![
            ("describedObject", at(src, "target").clone()),
            (
                "metric",
                obj(vec![
                    ("name", at(src, "metricName").clone()),
                    ("selector", at(src, "selector").clone()),
                ]),
            ),
            (
                "current",
                obj(vec![
                    ("value", at(src, "currentValue").clone()),
                    ("averageValue", at(src, "averageValue").clone()),
                ]),
            ),
        ]),
        "External" => obj(vec![
            (
                "metric",
                obj(vec![
                    ("name", at(src, "metricName").clone()),
                    ("selector", at(src, "metricSelector").clone()),
                ]),
            ),
            (
                "current",
                obj(vec![
                    ("value", at(src, "currentValue").clone()),
                    ("averageValue", at(src, "currentAverageValue").clone()),
                ]),
            ),
        ]),
        _ => src.clone(),
    };
    serde_json::from_value(obj(vec![("type", json!(type_)), (key.as_str(), converted)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn hpa(metrics: Option<Vec<v2::MetricSpec>>) -> Hpa {
        Hpa {
            metadata: ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            spec: Some(v2::HorizontalPodAutoscalerSpec {
                max_replicas: 5,
                metrics,
                scale_target_ref: v2::CrossVersionObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: "Deployment".into(),
                    name: "web".into(),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pods_metric() -> v2::MetricSpec {
        v2::MetricSpec {
            type_: "Pods".into(),
            pods: Some(v2::PodsMetricSource {
                metric: v2::MetricIdentifier {
                    name: "requests_per_second".into(),
                    selector: None,
                },
                target: v2::MetricTarget {
                    type_: "AverageValue".into(),
                    average_value: Some(Quantity("10".into())),
                    ..Default::default()
                },
            }),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_as_upstream() {
        let mut h = hpa(None);
        h.apply_defaults();
        let s = h.spec.as_ref().unwrap();
        assert_eq!(s.min_replicas, Some(1));
        assert_eq!(s.metrics, Some(vec![cpu_utilization(80)]));
        assert!(s.behavior.is_none());
        let mut b = hpa(None);
        b.spec.as_mut().unwrap().behavior = Some(v2::HorizontalPodAutoscalerBehavior {
            scale_down: Some(v2::HPAScalingRules {
                stabilization_window_seconds: Some(60),
                ..Default::default()
            }),
            scale_up: None,
        });
        b.apply_defaults();
        let behavior = b.spec.unwrap().behavior.unwrap();
        let up = behavior.scale_up.unwrap();
        assert_eq!(up.stabilization_window_seconds, Some(0));
        assert_eq!(up.select_policy.as_deref(), Some("Max"));
        assert_eq!(up.policies.unwrap().len(), 2);
        let down = behavior.scale_down.unwrap();
        assert_eq!(down.stabilization_window_seconds, Some(60));
        assert_eq!(down.policies, Some(vec![policy("Percent", 100, 15)]));
    }

    #[test]
    fn validation_names_the_field() {
        let fields =
            |h: &Hpa| -> Vec<String> { h.validate().into_iter().map(|e| e.field).collect() };
        let mut h = hpa(None);
        h.apply_defaults();
        assert!(h.validate().is_empty(), "{:?}", h.validate());
        let mut m = h.clone();
        m.spec.as_mut().unwrap().min_replicas = Some(0);
        assert_eq!(fields(&m), vec!["spec.minReplicas"]);
        let mut m = h.clone();
        m.spec.as_mut().unwrap().max_replicas = 0;
        assert_eq!(fields(&m), vec!["spec.maxReplicas", "spec.maxReplicas"]);
        let mut m = h.clone();
        m.spec.as_mut().unwrap().scale_target_ref.name = String::new();
        assert_eq!(fields(&m), vec!["spec.scaleTargetRef.name"]);
        let mut m = h.clone();
        m.spec.as_mut().unwrap().metrics = Some(vec![cpu_utilization(0)]);
        assert_eq!(
            fields(&m),
            vec!["spec.metrics[0].resource.target.averageUtilization"]
        );
        let mut m = h.clone();
        let mut bad = pods_metric();
        bad.type_ = "Resource".into();
        m.spec.as_mut().unwrap().metrics = Some(vec![bad]);
        assert_eq!(
            fields(&m),
            vec!["spec.metrics[0].resource", "spec.metrics[0].pods"]
        );
        let mut m = h.clone();
        m.spec.as_mut().unwrap().behavior = Some(v2::HorizontalPodAutoscalerBehavior {
            scale_up: Some(v2::HPAScalingRules {
                policies: Some(vec![policy("Pods", 0, 4000)]),
                ..Default::default()
            }),
            scale_down: None,
        });
        assert_eq!(
            fields(&m),
            vec![
                "spec.behavior.scaleUp.policies[0].value",
                "spec.behavior.scaleUp.policies[0].periodSeconds"
            ]
        );
    }

    #[test]
    fn v1_cpu_target_is_a_v2_resource_metric_and_back() {
        let v1h = v1::HorizontalPodAutoscaler {
            metadata: ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            spec: Some(v1::HorizontalPodAutoscalerSpec {
                max_replicas: 4,
                min_replicas: Some(2),
                scale_target_ref: v1::CrossVersionObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: "Deployment".into(),
                    name: "web".into(),
                },
                target_cpu_utilization_percentage: Some(50),
            }),
            status: None,
        };
        let v2h = to_v2(v1h.clone()).unwrap();
        assert_eq!(
            v2h.spec.as_ref().unwrap().metrics,
            Some(vec![cpu_utilization(50)])
        );
        assert_eq!(to_v1(v2h).unwrap(), v1h);
        // No target: v2 gets the default 80% and v1 reads it back.
        let mut none = v1h.clone();
        none.spec
            .as_mut()
            .unwrap()
            .target_cpu_utilization_percentage = None;
        let back = to_v1(to_v2(none).unwrap()).unwrap();
        assert_eq!(
            back.spec.unwrap().target_cpu_utilization_percentage,
            Some(80)
        );
    }

    #[test]
    fn v2_only_fields_survive_a_v1_round_trip() {
        let mut h = hpa(Some(vec![cpu_utilization(70), pods_metric()]));
        h.metadata.annotations = Some([("team".to_string(), "a".to_string())].into());
        h.spec.as_mut().unwrap().behavior = Some(v2::HorizontalPodAutoscalerBehavior {
            scale_down: Some(v2::HPAScalingRules {
                stabilization_window_seconds: Some(60),
                select_policy: Some("Min".into()),
                policies: Some(vec![policy("Pods", 1, 30)]),
                tolerance: None,
            }),
            scale_up: None,
        });
        h.status = Some(v2::HorizontalPodAutoscalerStatus {
            current_replicas: Some(2),
            desired_replicas: 3,
            current_metrics: Some(vec![v2::MetricStatus {
                type_: "Resource".into(),
                resource: Some(v2::ResourceMetricStatus {
                    name: "cpu".into(),
                    current: v2::MetricValueStatus {
                        average_utilization: Some(42),
                        average_value: Some(Quantity("120m".into())),
                        value: None,
                    },
                }),
                ..Default::default()
            }]),
            conditions: Some(vec![v2::HorizontalPodAutoscalerCondition {
                type_: "AbleToScale".into(),
                status: "True".into(),
                last_transition_time: Some(Time(jiff::Timestamp::from_second(100).unwrap())),
                reason: Some("ReadyForNewScale".into()),
                message: None,
            }]),
            last_scale_time: None,
            observed_generation: None,
        });
        let v1h = to_v1(h.clone()).unwrap();
        let spec = v1h.spec.as_ref().unwrap();
        assert_eq!(spec.target_cpu_utilization_percentage, Some(70));
        let status = v1h.status.as_ref().unwrap();
        assert_eq!(status.current_cpu_utilization_percentage, Some(42));
        assert_eq!(status.current_replicas, 2);
        let ann = v1h.metadata.annotations.as_ref().unwrap();
        let metrics: Value = serde_json::from_str(&ann[METRICS_ANNOTATION]).unwrap();
        assert_eq!(
            metrics,
            json!([{"type": "Pods", "pods": {"metricName": "requests_per_second", "targetAverageValue": "10"}}])
        );
        assert!(ann.contains_key(BEHAVIOR_ANNOTATION));
        assert!(ann.contains_key(CONDITIONS_ANNOTATION));
        assert!(ann.contains_key(CURRENT_METRICS_ANNOTATION));
        // Back to v2: everything as it was, the CPU metric after the others (as upstream).
        let back = to_v2(v1h).unwrap();
        assert_eq!(
            back.spec.as_ref().unwrap().metrics,
            Some(vec![pods_metric(), cpu_utilization(70)])
        );
        assert_eq!(
            back.spec.as_ref().unwrap().behavior,
            h.spec.as_ref().unwrap().behavior
        );
        assert_eq!(back.status, h.status);
        assert_eq!(back.metadata.annotations, h.metadata.annotations);
    }

    #[test]
    fn every_metric_source_round_trips_through_the_v1_format() {
        let q = |s: &str| Some(Quantity(s.into()));
        let specs = vec![
            v2::MetricSpec {
                type_: "Object".into(),
                object: Some(v2::ObjectMetricSource {
                    described_object: v2::CrossVersionObjectReference {
                        api_version: Some("networking.k8s.io/v1".into()),
                        kind: "Ingress".into(),
                        name: "main".into(),
                    },
                    metric: v2::MetricIdentifier {
                        name: "hits".into(),
                        selector: None,
                    },
                    target: v2::MetricTarget {
                        type_: "Value".into(),
                        value: q("2k"),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            },
            v2::MetricSpec {
                type_: "External".into(),
                external: Some(v2::ExternalMetricSource {
                    metric: v2::MetricIdentifier {
                        name: "queue".into(),
                        selector: None,
                    },
                    target: v2::MetricTarget {
                        type_: "AverageValue".into(),
                        average_value: q("30"),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            },
            v2::MetricSpec {
                type_: "ContainerResource".into(),
                container_resource: Some(v2::ContainerResourceMetricSource {
                    container: "app".into(),
                    name: "memory".into(),
                    target: v2::MetricTarget {
                        type_: "AverageValue".into(),
                        average_value: q("100Mi"),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            },
            pods_metric(),
        ];
        for m in specs {
            let v1 = metric_spec_to_v1(&m).unwrap();
            assert_eq!(metric_spec_from_v1(v1.clone()).unwrap(), m, "{v1}");
        }
    }

    #[test]
    fn cells_follow_print_hpa() {
        let now = jiff::Timestamp::from_second(100).unwrap();
        let mut h = hpa(Some(vec![cpu_utilization(80)]));
        h.apply_defaults();
        let cells = h.cells(now);
        assert_eq!(
            cells[..6],
            [
                json!("web"),
                json!("Deployment/web"),
                json!("cpu: <unknown>/80%"),
                json!("1"),
                json!(5),
                json!(0)
            ]
        );
        assert_eq!(cells.len(), Hpa::columns().len());
        let many = hpa(Some(vec![
            cpu_utilization(80),
            pods_metric(),
            pods_metric(),
        ]));
        assert_eq!(
            many.cells(now)[2],
            json!("cpu: <unknown>/80%, <unknown>/10 + 1 more...")
        );
        assert_eq!(hpa(Some(vec![])).cells(now)[2], json!("<none>"));
    }
}

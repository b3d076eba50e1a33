//! What every workload kind shares about its pod template and selector: template defaults and
//! validation (upstream's `ValidatePodTemplateSpecForReplicaSet` and friends), selector checks,
//! the selector's string form, the Containers/Images table cells, and the Go-style rendering of
//! values upstream puts in its error messages.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use miniorch_api::selector::{self, LabelQuery};

use crate::errors::FieldError;
use crate::kinds::pod::{default_pod_spec, validate_pod_spec};
use crate::validation;

/// Pod-spec defaults for a template (not the pod-only ones: tolerations, priority...).
pub(crate) fn default_template(t: &mut PodTemplateSpec) {
    if let Some(spec) = t.spec.as_mut() {
        default_pod_spec(spec);
    }
}

/// Field errors of a pod template at `path` (`spec.template`): its labels and annotations,
/// its pod spec, and a restart policy among `restart` (as each controller supports).
pub(crate) fn validate_template(
    path: &str,
    t: &PodTemplateSpec,
    restart: &[&str],
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(meta) = &t.metadata {
        errs.extend(validation::labels(
            &format!("{path}.metadata.labels"),
            meta.labels.as_ref(),
        ));
        for k in meta.annotations.iter().flatten().map(|(k, _)| k) {
            if let Err(e) = selector::validate_key(k) {
                errs.push(FieldError::invalid(
                    format!("{path}.metadata.annotations"),
                    k,
                    e.0.trim_start_matches("unable to parse requirement: "),
                ));
            }
        }
    }
    let Some(spec) = &t.spec else {
        errs.push(FieldError::required(format!("{path}.spec.containers"), ""));
        return errs;
    };
    errs.extend(validate_pod_spec(&format!("{path}.spec"), spec));
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let known = matches!(policy, "Always" | "OnFailure" | "Never");
    // An unknown policy was reported by the pod-spec validation already.
    if known && !restart.contains(&policy) {
        errs.push(FieldError::not_supported(
            format!("{path}.spec.restartPolicy"),
            policy,
            restart,
        ));
    }
    errs
}

/// Whether a selector selects nothing in particular: no labels and no expressions. Such a
/// selector is how a missing one decodes.
pub(crate) fn selector_is_empty(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && sel.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

/// A workload's selector at `path` (`spec.selector`) against its template's labels at
/// `template_path` (`spec.template`): required, well formed, and selecting the template.
pub(crate) fn validate_selector(
    path: &str,
    sel: &LabelSelector,
    template_path: &str,
    template: Option<&PodTemplateSpec>,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let labels = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.as_ref());
    if selector_is_empty(sel) {
        // An absent selector selects nothing, so the template's labels do not match either.
        errs.push(FieldError::required(path, ""));
        errs.push(mismatch(template_path, labels));
        return errs;
    }
    errs.extend(validation::labels(
        &format!("{path}.matchLabels"),
        sel.match_labels.as_ref(),
    ));
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{path}.matchExpressions[{i}]");
        if let Err(err) = selector::validate_key(&e.key) {
            errs.push(FieldError::invalid(
                format!("{f}.key"),
                &e.key,
                err.0.trim_start_matches("unable to parse requirement: "),
            ));
        }
        let values = e.values.as_deref().unwrap_or(&[]);
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => errs.push(FieldError::required(
                format!("{f}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => errs.push(FieldError::forbidden(
                format!("{f}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            op => errs.push(FieldError::invalid(
                format!("{f}.operator"),
                op,
                "not a valid selector operator",
            )),
        }
    }
    if !errs.is_empty() {
        return errs;
    }
    match LabelQuery::from_label_selector(sel) {
        Ok(q) if q.matches(labels) => {}
        Ok(_) => errs.push(mismatch(template_path, labels)),
        Err(_) => errs.push(FieldError::invalid(
            path,
            GoSelector(sel),
            "invalid label selector",
        )),
    }
    errs
}

fn mismatch(template_path: &str, labels: Option<&BTreeMap<String, String>>) -> FieldError {
    FieldError::invalid(
        format!("{template_path}.metadata.labels"),
        GoMap(labels),
        "`selector` does not match template `labels`",
    )
}

/// The selector may not change once set (apps/v1 and batch/v1).
pub(crate) fn selector_immutable(
    path: &str,
    new: &LabelSelector,
    old: &LabelSelector,
) -> Option<FieldError> {
    (new != old).then(|| FieldError::invalid(path, GoSelector(new), "field is immutable"))
}

/// `spec.replicas` and the like: `must be greater than or equal to 0`.
pub(crate) fn non_negative(path: &str, value: Option<i64>, errs: &mut Vec<FieldError>) {
    if let Some(v) = value.filter(|v| *v < 0) {
        errs.push(FieldError::invalid(
            path,
            v,
            "must be greater than or equal to 0",
        ));
    }
}

/// An int-or-percent field (`maxSurge`, `maxUnavailable`): a non-negative integer or a
/// percentage; `Some(value)` when it is a percentage.
pub(crate) fn int_or_percent(
    path: &str,
    v: &IntOrString,
    errs: &mut Vec<FieldError>,
) -> Option<i64> {
    match v {
        IntOrString::Int(i) => {
            non_negative(path, Some(i64::from(*i)), errs);
            None
        }
        IntOrString::String(s) => match s.strip_suffix('%').and_then(|n| n.parse::<i64>().ok()) {
            Some(p) => {
                non_negative(path, Some(p), errs);
                if p > 100 {
                    errs.push(FieldError::invalid(
                        path,
                        s,
                        "must not be greater than 100%",
                    ));
                }
                Some(p)
            }
            None => {
                errs.push(FieldError::invalid(
                    path,
                    s,
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                ));
                None
            }
        },
    }
}

/// Whether an int-or-percent is zero (`0` or `0%`).
pub(crate) fn is_zero(v: Option<&IntOrString>) -> bool {
    match v {
        None => true,
        Some(IntOrString::Int(i)) => *i == 0,
        Some(IntOrString::String(s)) => s.trim_end_matches('%').parse::<i64>() == Ok(0),
    }
}

/// An int-or-percent value as upstream's messages show it: `1` or `"25%"`.
pub(crate) struct GoIntOrString<'a>(pub Option<&'a IntOrString>);

impl fmt::Debug for GoIntOrString<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => write!(f, "nil"),
            Some(IntOrString::Int(i)) => write!(f, "{i}"),
            Some(IntOrString::String(s)) => write!(f, "{s:?}"),
        }
    }
}

/// The selector as upstream prints it (`metav1.LabelSelectorAsSelector(..).String()`):
/// requirements sorted by key, `<none>` for a selector that selects nothing.
pub(crate) fn selector_string(sel: Option<&LabelSelector>) -> String {
    let Some(sel) = sel else {
        return "<none>".into();
    };
    let mut parts: Vec<(String, String)> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), format!("{k}={v}")))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let mut values = e.values.clone().unwrap_or_default();
        values.sort();
        let values = values.join(",");
        let text = match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        };
        parts.push((e.key.clone(), text));
    }
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    parts
        .into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(",")
}

/// The Containers and Images cells of `-o wide` (names and images, comma-separated).
pub(crate) fn container_cells(spec: Option<&PodSpec>) -> (String, String) {
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or(&[]);
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let images: Vec<&str> = containers
        .iter()
        .map(|c| c.image.as_deref().unwrap_or(""))
        .collect();
    (names.join(","), images.join(","))
}

/// Labels as upstream's `labels.FormatLabels` prints them: `k=v,k2=v2`, or `<none>`.
pub(crate) fn format_labels(labels: Option<&BTreeMap<String, String>>) -> String {
    match labels {
        Some(l) if !l.is_empty() => l
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".into(),
    }
}

/// Description of the Containers column of `-o wide`.
pub(crate) const CONTAINERS_DOC: &str = "Names of each container in the template.";
/// Description of the Images column of `-o wide`.
pub(crate) const IMAGES_DOC: &str = "Images referenced by each container in the template.";

/// A string map the way Go's `%#v` prints it in upstream's messages:
/// `map[string]string{"app":"web"}`.
pub(crate) struct GoMap<'a>(pub Option<&'a BTreeMap<String, String>>);

impl fmt::Debug for GoMap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => write!(f, "map[string]string(nil)"),
            Some(m) => {
                write!(f, "map[string]string{{")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k:?}:{v:?}")?;
                }
                write!(f, "}}")
            }
        }
    }
}

/// A label selector the way Go's `%#v` prints it in upstream's messages.
pub(crate) struct GoSelector<'a>(pub &'a LabelSelector);

impl fmt::Debug for GoSelector<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v1.LabelSelector{{MatchLabels:{:?}, MatchExpressions:",
            GoMap(self.0.match_labels.as_ref())
        )?;
        match &self.0.match_expressions {
            None => write!(f, "[]v1.LabelSelectorRequirement(nil)")?,
            Some(list) => {
                write!(f, "[]v1.LabelSelectorRequirement{{")?;
                for (i, e) in list.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    let values = match &e.values {
                        None => "[]string(nil)".to_string(),
                        Some(v) => format!(
                            "[]string{{{}}}",
                            v.iter()
                                .map(|s| format!("{s:?}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                    write!(
                        f,
                        "v1.LabelSelectorRequirement{{Key:{:?}, Operator:{:?}, Values:{values}}}",
                        e.key, e.operator
                    )?;
                }
                write!(f, "}}")?;
            }
        }
        write!(f, "}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn template(l: &[(&str, &str)]) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels(l)),
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
        }
    }

    fn sel(l: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels(l)),
            match_expressions: None,
        }
    }

    #[test]
    fn selectors_must_select_the_template() {
        let t = template(&[("app", "web"), ("tier", "front")]);
        for (s, want) in [
            (sel(&[("app", "web")]), vec![]),
            (
                sel(&[("app", "db")]),
                vec![(
                    "spec.template.metadata.labels",
                    "Invalid value: map[string]string{\"app\":\"web\", \"tier\":\"front\"}: `selector` does not match template `labels`",
                )],
            ),
            (
                LabelSelector::default(),
                vec![
                    ("spec.selector", "Required value"),
                    (
                        "spec.template.metadata.labels",
                        "Invalid value: map[string]string{\"app\":\"web\", \"tier\":\"front\"}: `selector` does not match template `labels`",
                    ),
                ],
            ),
            (
                LabelSelector {
                    match_labels: None,
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "app".into(),
                        operator: "In".into(),
                        values: None,
                    }]),
                },
                vec![(
                    "spec.selector.matchExpressions[0].values",
                    "Required value: must be specified when `operator` is 'In' or 'NotIn'",
                )],
            ),
            (
                sel(&[("bad key", "x")]),
                vec![("spec.selector.matchLabels", "Invalid value: \"bad key\": ")],
            ),
        ] {
            let got: Vec<(String, String)> =
                validate_selector("spec.selector", &s, "spec.template", Some(&t))
                    .into_iter()
                    .map(|e| (e.field, e.message))
                    .collect();
            assert_eq!(got.len(), want.len(), "{got:?}");
            for ((gf, gm), (wf, wm)) in got.iter().zip(&want) {
                assert_eq!(gf, wf);
                assert!(gm.starts_with(wm), "{gm} does not start with {wm}");
            }
        }
    }

    #[test]
    fn template_restart_policy_and_pod_spec_paths() {
        let mut t = template(&[("app", "web")]);
        assert!(validate_template("spec.template", &t, &["Always"]).is_empty());
        t.spec.as_mut().unwrap().restart_policy = Some("Never".into());
        let errs = validate_template("spec.template", &t, &["Always"]);
        assert_eq!(errs[0].field, "spec.template.spec.restartPolicy");
        assert_eq!(
            errs[0].message,
            "Unsupported value: \"Never\": supported values: \"Always\""
        );
        assert!(validate_template("spec.template", &t, &["OnFailure", "Never"]).is_empty());
        t.spec.as_mut().unwrap().containers[0].image = None;
        assert_eq!(
            validate_template("spec.template", &t, &["OnFailure", "Never"])[0].field,
            "spec.template.spec.containers[0].image"
        );
        t.spec = None;
        assert_eq!(
            validate_template("spec.template", &t, &["Always"])[0].field,
            "spec.template.spec.containers"
        );
    }

    #[test]
    fn template_defaults_are_the_pod_spec_ones() {
        let mut t = template(&[("app", "web")]);
        default_template(&mut t);
        let s = t.spec.as_ref().unwrap();
        assert_eq!(s.restart_policy.as_deref(), Some("Always"));
        assert_eq!(s.dns_policy.as_deref(), Some("ClusterFirst"));
        assert_eq!(s.scheduler_name.as_deref(), Some("default-scheduler"));
        assert_eq!(s.termination_grace_period_seconds, Some(30));
        assert_eq!(
            s.containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        // Pod-only defaults stay off templates, as upstream.
        assert_eq!(s.tolerations, None);
        assert_eq!(s.priority, None);
        assert_eq!(s.enable_service_links, None);
    }

    #[test]
    fn selector_strings_and_go_values() {
        let mut s = sel(&[("tier", "front"), ("app", "web")]);
        s.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "env".into(),
            operator: "In".into(),
            values: Some(vec!["prod".into(), "dev".into()]),
        }]);
        assert_eq!(
            selector_string(Some(&s)),
            "app=web,env in (dev,prod),tier=front"
        );
        assert_eq!(selector_string(None), "<none>");
        assert_eq!(
            format!("{:?}", GoSelector(&sel(&[("app", "web")]))),
            "v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}"
        );
        assert_eq!(format!("{:?}", GoMap(None)), "map[string]string(nil)");
        assert_eq!(format_labels(None), "<none>");
        assert_eq!(
            format_labels(Some(&labels(&[("b", "2"), ("a", "1")]))),
            "a=1,b=2"
        );
    }

    #[test]
    fn int_or_percent_values() {
        for (v, ok, pct) in [
            (IntOrString::Int(1), true, None),
            (IntOrString::Int(-1), false, None),
            (IntOrString::String("25%".into()), true, Some(25)),
            (IntOrString::String("125%".into()), false, Some(125)),
            (IntOrString::String("abc".into()), false, None),
        ] {
            let mut errs = Vec::new();
            assert_eq!(int_or_percent("f", &v, &mut errs), pct, "{v:?}");
            assert_eq!(errs.is_empty(), ok, "{v:?}: {errs:?}");
        }
        assert!(is_zero(Some(&IntOrString::String("0%".into()))));
        assert!(!is_zero(Some(&IntOrString::Int(1))));
    }
}

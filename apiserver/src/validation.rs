//! Validation every kind shares: object names, namespaces, labels, annotations, finalizers
//! (upstream's `ValidateObjectMeta`). Kind-specific rules live with each kind.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use miniorch_api::names::{self, DNS1123_LABEL_MSG, DNS1123_SUBDOMAIN_MSG};
use miniorch_api::selector;

use crate::errors::FieldError;
use crate::registry::Kind;

/// Upstream's limit on the total size of annotations.
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

pub fn object_meta<K: Kind>(meta: &ObjectMeta) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match meta.name.as_deref() {
        None | Some("") => errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )),
        Some(name) => {
            let (ok, msg) = if K::NAME_IS_LABEL {
                (names::is_dns1123_label(name), DNS1123_LABEL_MSG)
            } else {
                (names::is_dns1123_subdomain(name), DNS1123_SUBDOMAIN_MSG)
            };
            if !ok {
                errs.push(FieldError::invalid("metadata.name", name, msg));
            }
        }
    }
    if K::NAMESPACED
        && let Some(ns) = meta.namespace.as_deref()
        && !names::is_dns1123_label(ns)
    {
        errs.push(FieldError::invalid(
            "metadata.namespace",
            ns,
            DNS1123_LABEL_MSG,
        ));
    }
    errs.extend(labels("metadata.labels", meta.labels.as_ref()));
    if let Some(ann) = &meta.annotations {
        let mut total = 0;
        for (k, v) in ann {
            if let Err(e) = selector::validate_key(k) {
                errs.push(FieldError::invalid(
                    "metadata.annotations",
                    k,
                    &strip_prefix(&e.0),
                ));
            }
            total += k.len() + v.len();
        }
        if total > MAX_ANNOTATIONS_BYTES {
            errs.push(FieldError::too_long(
                "metadata.annotations",
                MAX_ANNOTATIONS_BYTES,
            ));
        }
    }
    for (i, f) in meta.finalizers.iter().flatten().enumerate() {
        if selector::validate_key(f).is_err() {
            errs.push(FieldError::invalid(
                format!("metadata.finalizers[{i}]"),
                f,
                "name part must consist of alphanumeric characters, '-', '_' or '.'",
            ));
        }
    }
    errs
}

/// Label keys and values, as `ValidateLabels`.
pub fn labels(
    field: &str,
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (k, v) in labels.into_iter().flatten() {
        if let Err(e) = selector::validate_key(k) {
            errs.push(FieldError::invalid(field, k, &strip_prefix(&e.0)));
        }
        if let Err(e) = selector::validate_value(v) {
            errs.push(FieldError::invalid(field, v, &strip_prefix(&e.0)));
        }
    }
    errs
}

fn strip_prefix(msg: &str) -> String {
    msg.trim_start_matches("unable to parse requirement: ")
        .to_string()
}

/// A DNS-1123 label field (container names, port names...).
pub fn dns_label(field: &str, value: &str, errs: &mut Vec<FieldError>) {
    if !names::is_dns1123_label(value) {
        errs.push(FieldError::invalid(field, value, DNS1123_LABEL_MSG));
    }
}

/// A resource quantity field.
pub fn quantity(
    field: &str,
    q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    errs: &mut Vec<FieldError>,
) {
    if let Err(e) = miniorch_api::quantity::validate(&q.0) {
        errs.push(FieldError::invalid(field, &q.0, &e.to_string()));
    }
}

//! ConfigMaps (core/v1): keys and total size as upstream validates them, `immutable` config
//! maps whose data never changes again, and the `kubectl get configmaps` columns.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Value, json};

use crate::errors::FieldError;
use crate::registry::{Column, Kind};
use crate::table;

/// Upstream's limit on the data of one config map or secret (1 MiB).
pub(crate) const MAX_DATA_SIZE: usize = 1024 * 1024;

impl Kind for ConfigMap {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "configmap";
    const SHORT_NAMES: &'static [&'static str] = &["cm"];

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let mut total = 0;
        for (k, v) in self.data.iter().flatten() {
            config_key(&format!("data[{k}]"), k, &mut errs);
            if self.binary_data.as_ref().is_some_and(|b| b.contains_key(k)) {
                errs.push(FieldError::invalid(
                    format!("data[{k}]"),
                    k,
                    "duplicate of key present in binaryData",
                ));
            }
            total += v.len();
        }
        for (k, v) in self.binary_data.iter().flatten() {
            config_key(&format!("binaryData[{k}]"), k, &mut errs);
            total += v.0.len();
        }
        if total > MAX_DATA_SIZE {
            errs.push(FieldError::too_long("", MAX_DATA_SIZE));
        }
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        if old.immutable == Some(true) {
            errs.extend(immutable_changes(
                self.immutable,
                &[
                    ("data", self.data != old.data),
                    ("binaryData", self.binary_data != old.binary_data),
                ],
            ));
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name_column(),
            Column::new(
                "Data",
                "string",
                "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process.",
            ),
            Column::age_column(),
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        let count = self.data.as_ref().map_or(0, BTreeMap::len)
            + self.binary_data.as_ref().map_or(0, BTreeMap::len);
        vec![
            json!(self.metadata.name.clone().unwrap_or_default()),
            json!(count),
            json!(table::age(self.metadata.creation_timestamp.as_ref(), now)),
        ]
    }
}

/// Upstream's `IsConfigMapKey`, as a field error at `path` (`data[key]`).
pub(crate) fn config_key(path: &str, key: &str, errs: &mut Vec<FieldError>) {
    let msg = if key.len() > 253 {
        "must be no more than 253 characters"
    } else if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
    } else if key == "." {
        "must not be '.'"
    } else if key == ".." {
        "must not be '..'"
    } else if key.starts_with("..") {
        "must not start with '..'"
    } else {
        return;
    };
    errs.push(FieldError::invalid(path, key, msg));
}

/// Once `immutable` is set, it stays set and the listed fields may not change.
pub(crate) fn immutable_changes(
    new_immutable: Option<bool>,
    fields: &[(&str, bool)],
) -> Vec<FieldError> {
    const WHY: &str = "field is immutable when `immutable` is set";
    let mut errs = Vec::new();
    if new_immutable != Some(true) {
        errs.push(FieldError::forbidden("immutable", WHY));
    }
    for (field, changed) in fields {
        if *changed {
            errs.push(FieldError::forbidden(*field, WHY));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn cm(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn keys_are_validated() {
        assert!(
            cm(&[("app.properties", "a=b"), ("KEY_1", "x")])
                .validate()
                .is_empty()
        );
        for (key, want) in [
            ("bad key", "a valid config key"),
            (".", "must not be '.'"),
            ("..x", "must not start with '..'"),
            ("", "a valid config key"),
        ] {
            let errs = cm(&[(key, "v")]).validate();
            assert_eq!(errs.len(), 1, "{key}");
            assert_eq!(errs[0].field, format!("data[{key}]"));
            assert!(errs[0].message.contains(want), "{}", errs[0].message);
        }
        let mut both = cm(&[("a", "1")]);
        both.binary_data = Some([("a".to_string(), ByteString(vec![1]))].into());
        assert_eq!(
            both.validate()[0].message,
            "Invalid value: \"a\": duplicate of key present in binaryData"
        );
        let big = "x".repeat(MAX_DATA_SIZE + 1);
        assert_eq!(cm(&[("a", &big)]).validate()[0].reason, "FieldValueTooLong");
    }

    #[test]
    fn immutable_config_maps_keep_their_data() {
        let mut old = cm(&[("a", "1")]);
        old.immutable = Some(true);
        let mut new = old.clone();
        assert!(new.validate_update(&old).is_empty());
        new.data = Some([("a".to_string(), "2".to_string())].into());
        assert_eq!(new.validate_update(&old)[0].field, "data");
        let mut unset = old.clone();
        unset.immutable = Some(false);
        assert_eq!(unset.validate_update(&old)[0].field, "immutable");
        // A mutable one may change and become immutable.
        let mut m = cm(&[("a", "1")]);
        let mut n = m.clone();
        n.data = None;
        n.immutable = Some(true);
        assert!(n.validate_update(&m).is_empty());
        m.binary_data = Some([("b".to_string(), ByteString(vec![0, 1]))].into());
        m.metadata.name = Some("cfg".into());
        assert_eq!(
            m.cells(jiff::Timestamp::from_second(0).unwrap())[..2],
            [json!("cfg"), json!(2)]
        );
    }
}

//! Secrets (core/v1): type `Opaque` by default and fixed once set, `stringData` merged into
//! `data` on every write and never stored, the keys each built-in type requires, `immutable`
//! secrets, the `type` field selector and the `kubectl get secrets` columns.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

use crate::errors::FieldError;
use crate::kinds::configmap::{MAX_DATA_SIZE, config_key, immutable_changes};
use crate::registry::{Column, Kind};
use crate::table;

impl Kind for Secret {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "secret";
    const FIELDS: &'static [&'static str] = &["type"];

    fn field(&self, field: &str) -> Option<String> {
        match field {
            "type" => self.type_.clone(),
            _ => None,
        }
    }

    fn apply_defaults(&mut self) {
        self.type_.get_or_insert_with(|| "Opaque".into());
        // Write-only convenience: plain strings become data (winning over data), as upstream's
        // conversion does; stringData itself is never stored or returned.
        if let Some(strings) = self.string_data.take() {
            let data = self.data.get_or_insert_with(BTreeMap::new);
            for (k, v) in strings {
                data.insert(k, ByteString(v.into_bytes()));
            }
        }
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let data = self.data.clone().unwrap_or_default();
        let mut total = 0;
        for (k, v) in &data {
            config_key(&format!("data[{k}]"), k, &mut errs);
            total += v.0.len();
        }
        if total > MAX_DATA_SIZE {
            errs.push(FieldError::too_long("data", MAX_DATA_SIZE));
        }
        let required = |key: &str, errs: &mut Vec<FieldError>| {
            if !data.contains_key(key) {
                errs.push(FieldError::required(format!("data[{key}]"), ""));
                return false;
            }
            true
        };
        // A key that must be there and hold a JSON object (docker configs).
        let required_json = |key: &str, errs: &mut Vec<FieldError>| {
            if !required(key, errs) {
                return;
            }
            if let Some(v) = data.get(key)
                && let Err(e) = serde_json::from_slice::<serde_json::Map<String, Value>>(&v.0)
            {
                errs.push(FieldError::invalid(
                    format!("data[{key}]"),
                    "<secret contents redacted>",
                    &e.to_string(),
                ));
            }
        };
        match self.type_.as_deref().unwrap_or("Opaque") {
            "kubernetes.io/service-account-token" => {
                let key = "kubernetes.io/service-account.name";
                let named = self
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(key))
                    .is_some_and(|v| !v.is_empty());
                if !named {
                    errs.push(FieldError::required(
                        format!("metadata.annotations[{key}]"),
                        "",
                    ));
                }
            }
            "kubernetes.io/dockercfg" => required_json(".dockercfg", &mut errs),
            "kubernetes.io/dockerconfigjson" => required_json(".dockerconfigjson", &mut errs),
            // Either may be empty, but one must be there.
            "kubernetes.io/basic-auth"
                if !data.contains_key("username") && !data.contains_key("password") =>
            {
                errs.push(FieldError::required("data[username]", ""));
                errs.push(FieldError::required("data[password]", ""));
            }
            "kubernetes.io/ssh-auth"
                if data.get("ssh-privatekey").is_none_or(|v| v.0.is_empty()) =>
            {
                errs.push(FieldError::required("data[ssh-privatekey]", ""));
            }
            "kubernetes.io/tls" => {
                required("tls.crt", &mut errs);
                required("tls.key", &mut errs);
            }
            _ => {}
        }
        errs
    }

    fn validate_update(&self, old: &Self) -> Vec<FieldError> {
        let mut errs = self.validate();
        if self.type_ != old.type_ {
            errs.push(FieldError::invalid(
                "type",
                self.type_.clone().unwrap_or_default(),
                "field is immutable",
            ));
        }
        if old.immutable == Some(true) {
            errs.extend(immutable_changes(
                self.immutable,
                &[("data", self.data != old.data)],
            ));
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            Column::name_column(),
            Column::new(
                "Type",
                "string",
                "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types",
            ),
            Column::new(
                "Data",
                "string",
                "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4",
            ),
            Column::age_column(),
        ]
    }

    fn cells(&self, now: jiff::Timestamp) -> Vec<Value> {
        vec![
            json!(self.metadata.name.clone().unwrap_or_default()),
            json!(self.type_.clone().unwrap_or_default()),
            json!(self.data.as_ref().map_or(0, BTreeMap::len)),
            json!(table::age(self.metadata.creation_timestamp.as_ref(), now)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(type_: Option<&str>, data: &[(&str, &str)]) -> Secret {
        Secret {
            type_: type_.map(Into::into),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn string_data_is_merged_and_type_defaults() {
        let mut s = secret(None, &[("a", "old"), ("b", "keep")]);
        s.string_data = Some([("a".to_string(), "new".to_string())].into());
        s.apply_defaults();
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        assert_eq!(s.string_data, None);
        let data = s.data.as_ref().unwrap();
        assert_eq!(data["a"].0, b"new");
        assert_eq!(data["b"].0, b"keep");
        // What is stored serializes data as base64 and no stringData.
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["data"]["a"], "bmV3");
        assert!(v.get("stringData").is_none());
    }

    #[test]
    fn types_require_their_keys() {
        for (t, data, want) in [
            (Some("Opaque"), vec![], vec![]),
            (
                Some("kubernetes.io/tls"),
                vec![("tls.crt", "c")],
                vec!["data[tls.key]"],
            ),
            (
                Some("kubernetes.io/basic-auth"),
                vec![],
                vec!["data[username]", "data[password]"],
            ),
            (
                Some("kubernetes.io/basic-auth"),
                vec![("username", "u")],
                vec![],
            ),
            (
                Some("kubernetes.io/ssh-auth"),
                vec![],
                vec!["data[ssh-privatekey]"],
            ),
            (
                Some("kubernetes.io/dockerconfigjson"),
                vec![(".dockerconfigjson", "not json")],
                vec!["data[.dockerconfigjson]"],
            ),
            (
                Some("kubernetes.io/dockerconfigjson"),
                vec![(".dockerconfigjson", "{\"auths\":{}}")],
                vec![],
            ),
            (
                Some("kubernetes.io/service-account-token"),
                vec![],
                vec!["metadata.annotations[kubernetes.io/service-account.name]"],
            ),
            (None, vec![("bad key", "x")], vec!["data[bad key]"]),
        ] {
            let got: Vec<String> = secret(t, &data)
                .validate()
                .into_iter()
                .map(|e| e.field)
                .collect();
            assert_eq!(got, want, "{t:?}");
        }
    }

    #[test]
    fn type_is_immutable_and_so_is_immutable_data() {
        let mut old = secret(Some("Opaque"), &[("a", "1")]);
        let mut new = old.clone();
        new.type_ = Some("kubernetes.io/tls".into());
        assert!(new.validate_update(&old).iter().any(|e| e.field == "type"));
        old.immutable = Some(true);
        let mut new = old.clone();
        new.data = None;
        assert_eq!(new.validate_update(&old)[0].field, "data");
    }

    #[test]
    fn cells_and_fields() {
        let mut s = secret(
            Some("kubernetes.io/tls"),
            &[("tls.crt", "c"), ("tls.key", "k")],
        );
        s.metadata.name = Some("tls".into());
        assert_eq!(
            s.cells(jiff::Timestamp::from_second(0).unwrap())[..3],
            [json!("tls"), json!("kubernetes.io/tls"), json!(2)]
        );
        assert_eq!(s.field("type").as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(Secret::columns().len(), 4);
    }
}

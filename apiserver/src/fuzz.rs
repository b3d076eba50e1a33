//! What a fuzzer drives: untrusted request bytes through body decoding (JSON, YAML,
//! protobuf), typed decoding with unknown-field checks, every patch type, defaulting,
//! validation and selector parsing. Any panic here is a bug; errors are the expected outcome
//! for most inputs. `fuzz/` runs it under libFuzzer; a unit test runs it over a small corpus.

use bytes::Bytes;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use serde_json::Value;

use crate::handlers::{FieldValidation, decode_value};
use crate::patch::{self, PatchType};
use crate::registry::Kind;

const ORIGINAL: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","labels":{"app":"web"},"finalizers":["a/b"]},
"spec":{"containers":[{"name":"web","image":"demo","env":[{"name":"A","value":"1"}],"ports":[{"containerPort":80}]}]}}"#;

/// Runs one input. The first byte picks what the rest is fed to.
pub fn run(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => body_as::<Pod>("application/json", rest),
        1 => body_as::<Pod>("application/yaml", rest),
        2 => body_as::<Service>(crate::protobuf::MEDIA_TYPE, rest),
        3 => body_as::<Node>("application/json", rest),
        4 => {
            body_as::<Namespace>("application/json", rest);
            body_as::<Event>("application/json", rest);
            body_as::<Lease>("application/json", rest);
        }
        5 => patches(rest),
        6 => selectors(rest),
        _ => body_as::<Service>("application/json", rest),
    }
}

/// Decode, then what a create does with a decoded object.
fn body_as<K: Kind>(content_type: &str, body: &[u8]) {
    let Ok(value) = crate::http::parse_body(content_type, &Bytes::copy_from_slice(body)) else {
        return;
    };
    typed::<K>(value);
}

fn typed<K: Kind>(value: Value) {
    for mode in [FieldValidation::Strict, FieldValidation::Warn] {
        let Ok((mut obj, _)) = decode_value::<K>(value.clone(), mode) else {
            continue;
        };
        obj.prepare_for_create();
        obj.apply_defaults();
        let _ = crate::validation::object_meta::<K>(obj.metadata());
        let _ = obj.validate();
        let old = obj.clone();
        obj.prepare_for_update(&old);
        let _ = obj.validate_update(&old);
        let _ = obj.cells(jiff::Timestamp::now());
        let _ = obj.held_keys();
        let _ = obj.scale();
    }
}

fn patches(data: &[u8]) {
    let Ok(patch) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(original) = serde_json::from_str::<Value>(ORIGINAL) else {
        return;
    };
    for kind in [
        PatchType::Merge,
        PatchType::Json,
        PatchType::Strategic,
        PatchType::Apply,
    ] {
        if let Ok(out) = patch::apply(kind, &original, &patch) {
            typed::<Pod>(out);
        }
    }
    managed_fields(&original, patch);
}

/// Server-side apply and managedFields read untrusted configurations and entries.
fn managed_fields(original: &Value, input: Value) {
    use crate::managed_fields::{FieldSet, Manager, Operation, apply_config, updated_entries};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    fn manager(name: &str, operation: Operation) -> Manager {
        Manager {
            name: name.to_string(),
            operation,
            subresource: None,
        }
    }
    fn apply(live: &Value, config: &Value, name: &str) -> Option<Value> {
        let now = Time(jiff::Timestamp::UNIX_EPOCH);
        let m = manager(name, Operation::Apply);
        apply_config(Some(live), config, &m, "v1", true, false, &now).ok()
    }
    if let Some(out) = apply(original, &input, "a") {
        // Another manager applying the original may conflict; the first one then drops it all.
        let _ = apply(&out, original, "b");
        let _ = apply(&out, &serde_json::json!({}), "a");
        typed::<Pod>(out);
    }
    let _ = FieldSet::from_fields_v1(&input).to_fields_v1();
    if let Ok(entries) = serde_json::from_value::<Vec<ManagedFieldsEntry>>(input.clone()) {
        let mut live = original.clone();
        live["metadata"]["managedFields"] = input;
        let _ = apply(&live, original, "a");
        let now = Time(jiff::Timestamp::UNIX_EPOCH);
        let _ = updated_entries(
            original,
            &serde_json::json!({}),
            &entries,
            Some(&entries),
            &manager("u", Operation::Update),
            "v1",
            &now,
        );
    }
}

fn selectors(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = miniorch_api::selector::LabelQuery::parse(s);
    let _ = miniorch_api::selector::FieldQuery::parse(s);
    let q = crate::http::Query::parse(Some(s));
    let _ = crate::handlers::Filter::from_query::<Pod>(&q);
    let _ = crate::request::parse(s);
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_small_corpus_goes_through_without_panics() {
        let corpus: &[&[u8]] = &[
            b"\x00{\"metadata\":{\"name\":\"x\"},\"spec\":{\"containers\":[{\"name\":\"c\",\"image\":\"i\"}]}}",
            b"\x00{\"spec\":{\"containers\":[{\"resources\":{\"limits\":{\"cpu\":\"1e999999\"}}}]}}",
            b"\x01a: [1, {b: c}]\n---\nd",
            b"\x02k8s\x00\x0a\x00",
            b"\x05{\"spec\":{\"containers\":[{\"$patch\":\"delete\"}]}}",
            b"\x05[{\"op\":\"move\",\"from\":\"/spec\",\"path\":\"/spec/x\"}]",
            b"\x05{\"$setElementOrder/containers\":[1,2],\"metadata\":{\"$deleteFromPrimitiveList/finalizers\":[\"a/b\"]}}",
            b"\x05{\"metadata\":{\"finalizers\":[\"a/b\",\"a/b\"]},\"spec\":{\"containers\":[{\"name\":\"web\",\"image\":\"x\"}]}}",
            b"\x05[{\"manager\":\"m\",\"operation\":\"Update\",\"fieldsV1\":{\"f:spec\":{\"f:containers\":{\"k:{\\\"name\\\":\\\"web\\\"}\":{\".\":{},\"f:image\":{}}},\"i:9\":{},\"v:[\":{}}}},{\"operation\":\"Apply\"}]",
            b"\x06a in (b,c),!d,e!=f&fieldSelector=spec.nodeName%3Dx",
            b"\x07{\"spec\":{\"type\":\"NodePort\",\"ports\":[{\"port\":-1,\"nodePort\":99999999}]}}",
            b"\x03{\"spec\":{\"podCIDR\":\"1.2.3.4/99\",\"taints\":[{\"effect\":\"x\"}]}}",
        ];
        for input in corpus {
            super::run(input);
        }
    }
}

//! Bad input over plain HTTP, over both stores: every case gets a `Status` with the upstream
//! code and reason and a message that says what is wrong, and nothing is stored.

mod support;

use serde_json::Value;
use support::{Api, STORES};

const PODS: &str = "/api/v1/namespaces/default/pods";
const JSON: &str = "application/json";

/// The Status body of a failed request, checked for code and reason; its message.
fn status(api: &Api, (code, body): (u16, String), want_code: u16, want_reason: &str) -> String {
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{:?}: not JSON ({e}): {body}", api.store));
    assert_eq!(code, want_code, "{:?}: {body}", api.store);
    assert_eq!(v["kind"], "Status", "{:?}: {body}", api.store);
    assert_eq!(v["status"], "Failure", "{body}");
    assert_eq!(v["code"], want_code, "{body}");
    assert_eq!(v["reason"], want_reason, "{body}");
    v["message"].as_str().unwrap_or_default().to_string()
}

fn pod(name: &str, extra_spec: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{"containers":[{{"name":"c","image":"miniorch/demo"}}]{extra_spec}}}}}"#
    )
}

#[test]
fn bad_requests_get_a_status_with_reason_and_message() {
    for store in STORES {
        let api = Api::start(store);

        // Malformed JSON and YAML.
        let msg = status(
            &api,
            api.curl("POST", PODS, JSON, r#"{"apiVersion": "v1", "kind": "#),
            400,
            "BadRequest",
        );
        assert!(!msg.is_empty());
        let msg = status(
            &api,
            api.curl(
                "POST",
                PODS,
                "application/yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: [name: x\n",
            ),
            400,
            "BadRequest",
        );
        assert!(!msg.is_empty());

        // A body of another kind or version than the URL names.
        let svc = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":{"ports":[{"port":80}]}}"#;
        let msg = status(&api, api.curl("POST", PODS, JSON, svc), 400, "BadRequest");
        assert!(msg.contains("Service") && msg.contains("Pod"), "{msg}");
        let wrong_version = pod("v", "").replace(r#""apiVersion":"v1""#, r#""apiVersion":"v2""#);
        let msg = status(
            &api,
            api.curl("POST", PODS, JSON, &wrong_version),
            400,
            "BadRequest",
        );
        assert!(msg.contains("v2"), "{msg}");

        // Unknown fields: rejected with fieldValidation=Strict, named in the message.
        let unknown = pod("u", r#","colour":"blue""#);
        let msg = status(
            &api,
            api.curl(
                "POST",
                &format!("{PODS}?fieldValidation=Strict"),
                JSON,
                &unknown,
            ),
            400,
            "BadRequest",
        );
        assert!(msg.contains("spec.colour"), "{msg}");

        // A body over 3 MiB.
        let big = tempfile::NamedTempFile::new().expect("temp file");
        let blob = "x".repeat(3 * 1024 * 1024 + 10);
        std::fs::write(
            big.path(),
            pod("big", "").replace(
                r#""metadata":{"name":"big"}"#,
                &format!(r#""metadata":{{"name":"big","annotations":{{"a":"{blob}"}}}}"#),
            ),
        )
        .expect("write");
        let (code, body) = api.curl("POST", PODS, JSON, &format!("@{}", big.path().display()));
        status(&api, (code, body), 413, "RequestEntityTooLarge");

        // Invalid selectors.
        let msg = status(
            &api,
            api.curl(
                "GET",
                &format!("{PODS}?labelSelector=app%20in%20(web"),
                JSON,
                "",
            ),
            400,
            "BadRequest",
        );
        assert!(msg.contains("app in (web"), "{msg}");
        let msg = status(
            &api,
            api.curl(
                "GET",
                &format!("{PODS}?fieldSelector=spec.colour%3Dblue"),
                JSON,
                "",
            ),
            400,
            "BadRequest",
        );
        assert!(msg.contains("spec.colour"), "{msg}");

        // A stale resourceVersion.
        let (code, body) = api.curl("POST", PODS, JSON, &pod("p", ""));
        assert_eq!(code, 201, "{body}");
        let created: Value = serde_json::from_str(&body).expect("pod");
        let (code, _) = api.curl(
            "PATCH",
            &format!("{PODS}/p"),
            "application/merge-patch+json",
            r#"{"metadata":{"labels":{"a":"b"}}}"#,
        );
        assert_eq!(code, 200);
        let mut stale = created.clone();
        stale["metadata"]["labels"] = serde_json::json!({"a": "c"});
        let msg = status(
            &api,
            api.curl("PUT", &format!("{PODS}/p"), JSON, &stale.to_string()),
            409,
            "Conflict",
        );
        assert!(msg.contains("the object has been modified"), "{msg}");

        // None of it was stored.
        let (code, body) = api.curl("GET", PODS, JSON, "");
        assert_eq!(code, 200);
        let names: Vec<String> = serde_json::from_str::<Value>(&body).expect("list")["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(names, vec!["p"], "{:?}", api.store);
        let labels =
            &serde_json::from_str::<Value>(&api.curl("GET", &format!("{PODS}/p"), JSON, "").1)
                .expect("pod")["metadata"]["labels"];
        assert_eq!(labels["a"], "b");
    }
}

#[test]
fn without_its_store_the_apiserver_answers_503_at_once() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let port = support::free_port();
    let nobody = format!("http://127.0.0.1:{}", support::free_port());
    let mut api = Command::new(env!("CARGO_BIN_EXE_miniorch-apiserver"))
        .args(["--etcd-servers", &nobody, "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("apiserver");
    let url = format!("http://127.0.0.1:{port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    // 0: not listening yet, or (the defect this guards) a connection left unanswered.
    let (code, body) = loop {
        let (code, body) = support::curl(&[&url], 5);
        if code != 0 || Instant::now() > deadline {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = api.kill();
    let _ = api.wait();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("etcd failed"), "{body}");
}

//! Server-side apply with the real kubectl, over miniorch-store and over the real etcd:
//! `apply --server-side` creates and updates, fields dropped from the configuration leave the
//! object, a field another manager changed is a conflict until `--force-conflicts`, and
//! `--show-managed-fields` shows who owns what.

mod support;

use support::{Api, STORES, text};

/// The deployment as its author applies it; `replicas`, the image and the extra lines vary.
fn deployment(replicas: u32, image: &str, extra_label: bool, env_b: bool) -> String {
    let label = if extra_label {
        "\n    tier: frontend"
    } else {
        ""
    };
    let env = if env_b {
        "\n        - name: B\n          value: \"2\""
    } else {
        ""
    };
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web{label}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: {image}
        env:
        - name: A
          value: \"1\"{env}
"
    )
}

fn server_side_apply(api: &Api, yaml: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["apply", "--server-side", "-f", "-"];
    args.extend_from_slice(extra);
    api.kubectl_stdin(&args, Some(yaml))
}

fn applied(api: &Api, yaml: &str, extra: &[&str]) -> String {
    let out = server_side_apply(api, yaml, extra);
    assert!(
        out.status.success(),
        "apply --server-side failed on {:?}: {}",
        api.store,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn jsonpath(api: &Api, what: &str, path: &str) -> String {
    api.ok(&["get", what, "-o", &format!("jsonpath={path}")])
}

#[test]
fn kubectl_server_side_apply_owns_prunes_and_conflicts() {
    for store in STORES {
        let api = Api::start(store);

        // Create.
        let out = applied(&api, &deployment(2, "nginx:1.25", true, true), &[]);
        assert!(
            out.contains("deployment.apps/web serverside-applied"),
            "{out}"
        );
        assert_eq!(jsonpath(&api, "deploy/web", "{.spec.replicas}"), "2");
        // The server's defaults are in the object, but owned by nobody.
        assert_eq!(
            jsonpath(
                &api,
                "deploy/web",
                "{.spec.template.spec.containers[0].imagePullPolicy}"
            ),
            "IfNotPresent"
        );
        let yaml = api.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "yaml",
            "--show-managed-fields",
        ]);
        assert!(yaml.contains("managedFields:"), "{yaml}");
        assert!(yaml.contains("operation: Apply"), "{yaml}");
        assert!(yaml.contains("fieldsType: FieldsV1"), "{yaml}");
        assert!(yaml.contains("k:{\"name\":\"web\"}:"), "{yaml}");
        assert!(yaml.contains("f:replicas: {}"), "{yaml}");
        assert!(!yaml.contains("f:imagePullPolicy"), "{yaml}");
        // Without the flag kubectl hides them.
        let plain = api.ok(&["get", "deploy", "web", "-o", "yaml"]);
        assert!(!plain.contains("managedFields"), "{plain}");

        // The same configuration again writes nothing.
        let rv = jsonpath(&api, "deploy/web", "{.metadata.resourceVersion}");
        applied(&api, &deployment(2, "nginx:1.25", true, true), &[]);
        assert_eq!(
            jsonpath(&api, "deploy/web", "{.metadata.resourceVersion}"),
            rv
        );

        // A changed field is applied.
        let out = applied(&api, &deployment(2, "nginx:1.26", true, true), &[]);
        assert!(
            out.contains("deployment.apps/web serverside-applied"),
            "{out}"
        );
        assert_eq!(
            jsonpath(
                &api,
                "deploy/web",
                "{.spec.template.spec.containers[0].image}"
            ),
            "nginx:1.26"
        );
        assert_eq!(jsonpath(&api, "deploy/web", "{.metadata.generation}"), "2");

        // Fields dropped from the configuration leave the object.
        applied(&api, &deployment(2, "nginx:1.26", false, false), &[]);
        assert_eq!(
            jsonpath(
                &api,
                "deploy/web",
                "{.spec.template.spec.containers[0].env[*].name}"
            ),
            "A"
        );
        assert_eq!(
            jsonpath(&api, "deploy/web", "{.metadata.labels}"),
            "{\"app\":\"web\"}"
        );

        // Another manager changes replicas: applying a different value is a conflict.
        let out = api.ok(&["scale", "deploy", "web", "--replicas=5"]);
        assert!(out.contains("deployment.apps/web scaled"), "{out}");
        let yaml = api.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "yaml",
            "--show-managed-fields",
        ]);
        assert!(yaml.contains("subresource: scale"), "{yaml}");
        let out = server_side_apply(&api, &deployment(2, "nginx:1.26", false, false), &[]);
        assert!(!out.status.success(), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Apply failed with 1 conflict: conflict with")
                && err.contains("with subresource \"scale\" using apps/v1: .spec.replicas"),
            "{err}"
        );
        assert!(err.contains("--force-conflicts"), "{err}");
        assert_eq!(jsonpath(&api, "deploy/web", "{.spec.replicas}"), "5");
        // Applying the value it already has is no conflict: the field is shared.
        applied(&api, &deployment(5, "nginx:1.26", false, false), &[]);

        // Forced, the apply takes the field over.
        let out = applied(
            &api,
            &deployment(2, "nginx:1.26", false, false),
            &["--force-conflicts"],
        );
        assert!(
            out.contains("deployment.apps/web serverside-applied"),
            "{out}"
        );
        assert_eq!(jsonpath(&api, "deploy/web", "{.spec.replicas}"), "2");
        let yaml = api.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "yaml",
            "--show-managed-fields",
        ]);
        assert!(!yaml.contains("subresource: scale"), "{yaml}");
        assert!(yaml.contains("operation: Apply"), "{yaml}");

        // A label added by another manager is theirs; the apply leaves it alone.
        api.ok(&["label", "deploy", "web", "team=a"]);
        applied(&api, &deployment(2, "nginx:1.26", false, false), &[]);
        assert_eq!(jsonpath(&api, "deploy/web", "{.metadata.labels.team}"), "a");
        let managers = jsonpath(&api, "deploy/web", "{.metadata.managedFields[*].manager}");
        assert!(managers.contains("kubectl-label"), "{managers}");
    }
}

#[test]
fn service_ports_are_keyed_by_port() {
    const SVC: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
  - name: https
    port: 443
    targetPort: 8443
";
    for store in STORES {
        let api = Api::start(store);
        let out = applied(&api, SVC, &[]);
        assert!(out.contains("service/web serverside-applied"), "{out}");
        let ip = jsonpath(&api, "svc/web", "{.spec.clusterIP}");
        assert!(!ip.is_empty());
        // Dropping a port removes it; what the server allocated stays.
        let http_only = SVC.split("  - name: https").next().expect("first part");
        applied(&api, http_only, &[]);
        assert_eq!(jsonpath(&api, "svc/web", "{.spec.ports[*].port}"), "80");
        assert_eq!(jsonpath(&api, "svc/web", "{.spec.clusterIP}"), ip);
        assert_eq!(
            jsonpath(&api, "svc/web", "{.spec.ports[0].protocol}"),
            "TCP"
        );
        let yaml = api.ok(&["get", "svc", "web", "-o", "yaml", "--show-managed-fields"]);
        assert!(yaml.contains("k:{\"port\":80}:"), "{yaml}");
        assert!(!yaml.contains("k:{\"port\":443}"), "{yaml}");
    }
}

#[test]
fn every_write_records_its_manager() {
    const CM: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  color: blue
";
    for store in STORES {
        let api = Api::start(store);
        // Client-side apply keeps working and is recorded as an Update.
        let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(CM));
        assert!(out.status.success(), "{}", text(&out));
        let managed = |api: &Api| {
            jsonpath(
                api,
                "cm/settings",
                "{range .metadata.managedFields[*]}{.manager}/{.operation}{\"\\n\"}{end}",
            )
        };
        assert_eq!(managed(&api).trim(), "kubectl-client-side-apply/Update");
        let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(&CM.replace("blue", "red")));
        assert!(
            text(&out).contains("configmap/settings configured"),
            "{}",
            text(&out)
        );
        let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(&CM.replace("blue", "red")));
        assert!(
            text(&out).contains("configmap/settings unchanged"),
            "{}",
            text(&out)
        );

        // A server-side apply changing a value the client-side applier set conflicts.
        let out = server_side_apply(&api, &CM.replace("blue", "green"), &[]);
        assert!(!out.status.success(), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(".data.color"), "{err}");
        assert!(
            err.contains("conflict with \"kubectl-client-side-apply\""),
            "{err}"
        );

        // kubectl create, then an annotation: each manager with the fields it set.
        api.ok(&["create", "configmap", "other", "--from-literal=a=1"]);
        api.ok(&["annotate", "cm", "other", "note=x"]);
        let yaml = api.ok(&["get", "cm", "other", "-o", "yaml", "--show-managed-fields"]);
        assert!(yaml.contains("manager: kubectl-create"), "{yaml}");
        assert!(yaml.contains("manager: kubectl-annotate"), "{yaml}");
        assert!(yaml.contains("f:note: {}"), "{yaml}");
        assert!(yaml.contains("f:a: {}"), "{yaml}");

        // Without fieldManager the manager is the User-Agent's product.
        let (code, body) = api.curl(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/other",
            "application/merge-patch+json",
            r#"{"data":{"b":"2"}}"#,
        );
        assert_eq!(code, 200, "{body}");
        let managers = jsonpath(&api, "cm/other", "{.metadata.managedFields[*].manager}");
        assert!(managers.split(' ').any(|m| m == "curl"), "{managers}");

        // The conflict Status names each field in details.causes.
        let (code, body) = api.curl(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/other?fieldManager=mine",
            "application/apply-patch+yaml",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"other"},"data":{"a":"9","b":"9"}}"#,
        );
        assert_eq!(code, 409, "{body}");
        let status: serde_json::Value = serde_json::from_str(&body).expect("a Status");
        assert_eq!(status["reason"], "Conflict", "{body}");
        assert_eq!(
            status["message"],
            "Apply failed with 2 conflicts: conflicts with \"curl\" using v1:\n- .data.b\nconflicts with \"kubectl-create\" using v1:\n- .data.a",
        );
        let causes = status["details"]["causes"].as_array().expect("causes");
        assert_eq!(causes.len(), 2, "{body}");
        assert!(
            causes.iter().all(|c| c["reason"] == "FieldManagerConflict"),
            "{body}"
        );
        let mut fields: Vec<&str> = causes.iter().filter_map(|c| c["field"].as_str()).collect();
        fields.sort();
        assert_eq!(fields, [".data.a", ".data.b"]);
        // Forced, the applier takes both; managers left with nothing are dropped.
        let (code, body) = api.curl(
            "PATCH",
            "/api/v1/namespaces/default/configmaps/other?fieldManager=mine&force=true",
            "application/apply-patch+yaml",
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"other"},"data":{"a":"9","b":"9"}}"#,
        );
        assert_eq!(code, 200, "{body}");
        let managers = jsonpath(&api, "cm/other", "{.metadata.managedFields[*].manager}");
        assert_eq!(managers, "mine kubectl-annotate");
    }
}

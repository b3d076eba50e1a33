//! The real kubectl against the apiserver, over miniorch-store and over the real etcd: each case
//! checks kubectl's exit code and what it prints.

mod support;

use support::{Api, STORES, eventually, text};

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  labels:
    app: web
spec:
  containers:
  - name: web
    image: miniorch/demo:1
    ports:
    - containerPort: 8080
";

#[test]
fn kubectl_apply_get_describe_label_delete() {
    for store in STORES {
        let api = Api::start(store);
        let out = api.kubectl(&["get", "pods"]);
        assert!(out.status.success());
        assert!(
            text(&out).contains("No resources found in default namespace."),
            "{}",
            text(&out)
        );

        assert_eq!(
            api.kubectl_stdin(&["apply", "-f", "-"], Some(POD))
                .status
                .code(),
            Some(0)
        );
        let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(POD));
        assert!(text(&out).contains("pod/web unchanged"), "{}", text(&out));

        let table = api.ok(&["get", "pods"]);
        let mut lines = table.lines();
        assert_eq!(
            lines
                .next()
                .map(|l| l.split_whitespace().collect::<Vec<_>>()),
            Some(vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"])
        );
        let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
        assert_eq!(&row[..4], &["web", "0/1", "Pending", "0"]);

        let wide = api.ok(&["get", "pods", "-o", "wide"]);
        assert!(
            wide.starts_with("NAME") && wide.contains("NOMINATED NODE") && wide.contains("<none>"),
            "{wide}"
        );
        assert_eq!(api.ok(&["get", "po", "-o", "name"]).trim(), "pod/web");
        let yaml = api.ok(&["get", "pod", "web", "-o", "yaml"]);
        for want in [
            "restartPolicy: Always",
            "dnsPolicy: ClusterFirst",
            "terminationGracePeriodSeconds: 30",
            "imagePullPolicy: IfNotPresent",
            "protocol: TCP",
            "phase: Pending",
            "qosClass: BestEffort",
        ] {
            assert!(yaml.contains(want), "missing default {want:?} in\n{yaml}");
        }
        let json = api.json(&["get", "pod", "web"]);
        assert!(
            json["metadata"]["uid"]
                .as_str()
                .is_some_and(|u| u.len() == 36)
        );
        assert!(
            json["metadata"]["resourceVersion"]
                .as_str()
                .is_some_and(|r| r.parse::<i64>().is_ok())
        );

        let all = api.ok(&["get", "pods", "-A"]);
        assert!(
            all.lines().nth(1).is_some_and(|l| l.starts_with("default")),
            "{all}"
        );

        let described = api.ok(&["describe", "pod", "web"]);
        for want in [
            "Name:         web",
            "Namespace:    default",
            "Labels:       app=web",
            "Status:       Pending",
            "Port:         8080/TCP",
            "QoS Class:",
            "Tolerations:",
        ] {
            assert!(described.contains(want), "missing {want:?} in\n{described}");
        }

        assert!(
            api.ok(&["label", "pod", "web", "tier=front"])
                .contains("pod/web labeled")
        );
        assert!(
            api.ok(&["get", "pods", "-l", "tier=front", "--show-labels"])
                .contains("app=web,tier=front")
        );
        assert!(
            api.kubectl(&["get", "pods", "-l", "tier=back"])
                .stderr
                .starts_with(b"No resources found")
        );
        assert!(
            api.ok(&["label", "pod", "web", "tier-"])
                .contains("pod/web unlabeled")
        );
        assert!(
            api.ok(&["annotate", "pod", "web", "note=hello"])
                .contains("pod/web annotated")
        );
        assert!(
            api.ok(&[
                "get",
                "pods",
                "--field-selector",
                "status.phase=Pending",
                "-o",
                "name"
            ])
            .contains("pod/web")
        );
        assert!(
            api.ok(&[
                "get",
                "pods",
                "--field-selector",
                "metadata.name=nope",
                "-o",
                "name"
            ])
            .trim()
            .is_empty()
        );

        assert!(
            api.ok(&["delete", "pod", "web"])
                .contains("pod \"web\" deleted")
        );
        let err = api.fails(&["get", "pod", "web"]);
        assert!(
            err.contains("Error from server (NotFound): pods \"web\" not found"),
            "{err}"
        );
    }
}

#[test]
fn kubectl_patch_types_and_conflicts() {
    for store in STORES {
        let api = Api::start(store);
        api.kubectl_stdin(&["apply", "-f", "-"], Some(POD));
        assert!(
            api.ok(&[
                "patch",
                "pod",
                "web",
                "--type",
                "merge",
                "-p",
                r#"{"metadata":{"labels":{"a":"1"}}}"#
            ])
            .contains("pod/web patched")
        );
        assert!(
            api.ok(&[
                "patch",
                "pod",
                "web",
                "--type",
                "json",
                "-p",
                r#"[{"op":"add","path":"/metadata/labels/b","value":"2"}]"#
            ])
            .contains("patched")
        );
        assert!(
            api.ok(&[
                "patch",
                "pod",
                "web",
                "-p",
                r#"{"spec":{"containers":[{"name":"web","image":"miniorch/demo:2"}]}}"#
            ])
            .contains("patched")
        );
        let json = api.json(&["get", "pod", "web"]);
        assert_eq!(json["metadata"]["labels"]["a"], "1");
        assert_eq!(json["metadata"]["labels"]["b"], "2");
        assert_eq!(json["spec"]["containers"][0]["image"], "miniorch/demo:2");
        // Strategic merge kept the port of the container it merged by name.
        assert_eq!(
            json["spec"]["containers"][0]["ports"][0]["containerPort"],
            8080
        );

        // A pod's spec is immutable but for images: 422 with the field.
        let err = api.fails(&[
            "patch",
            "pod",
            "web",
            "-p",
            r#"{"spec":{"containers":[{"name":"web","args":["x"]}]}}"#,
        ]);
        assert!(
            err.contains(
                "The Pod \"web\" is invalid: spec: Forbidden: pod updates may not change fields"
            ),
            "{err}"
        );

        // Replace with a stale resourceVersion: 409 Conflict.
        let mut stale = json.clone();
        stale["metadata"]["resourceVersion"] = serde_json::json!("1");
        let out = api.kubectl_stdin(&["replace", "-f", "-"], Some(&stale.to_string()));
        assert!(!out.status.success());
        assert!(
            text(&out).contains(
                "Operation cannot be fulfilled on pods \"web\": the object has been modified"
            ),
            "{}",
            text(&out)
        );

        let err = api.fails(&[
            "patch",
            "pod",
            "web",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/nope"}]"#,
        ]);
        assert!(!err.is_empty());
    }
}

#[test]
fn kubectl_validation_errors_name_the_field() {
    for store in STORES {
        let api = Api::start(store);
        let bad = POD.replace("name: web\n  labels", "name: Web_1\n  labels");
        let err =
            String::from_utf8_lossy(&api.kubectl_stdin(&["apply", "-f", "-"], Some(&bad)).stderr)
                .into_owned();
        assert!(
            err.contains("metadata.name: Invalid value: \"Web_1\": a lowercase RFC 1123 subdomain"),
            "{err}"
        );
        let no_image = POD.replace("    image: miniorch/demo:1\n", "");
        let err = String::from_utf8_lossy(
            &api.kubectl_stdin(&["apply", "-f", "-"], Some(&no_image))
                .stderr,
        )
        .into_owned();
        assert!(
            err.contains("spec.containers[0].image: Required value"),
            "{err}"
        );
        // kubectl validates against the server: unknown fields are rejected (fieldValidation=Strict).
        let unknown = POD.replace("    ports:", "    bogus: 1\n    ports:");
        let err = String::from_utf8_lossy(
            &api.kubectl_stdin(&["apply", "-f", "-"], Some(&unknown))
                .stderr,
        )
        .into_owned();
        assert!(
            err.contains("unknown field \"spec.containers[0].bogus\""),
            "{err}"
        );
        let err = api.fails(&["get", "pods", "-l", "a in (b"]);
        assert!(
            err.contains("BadRequest") || err.contains("unable to parse"),
            "{err}"
        );
        let err = api.fails(&["get", "pods", "--field-selector", "spec.bogus=1"]);
        assert!(
            err.contains("field label not supported: spec.bogus"),
            "{err}"
        );
        let err = api.fails(&["delete", "pod", "nothere"]);
        assert!(
            err.contains("Error from server (NotFound): pods \"nothere\" not found"),
            "{err}"
        );
        let err = api.fails(&[
            "create",
            "namespace",
            "default",
            "--dry-run=server",
            "-o",
            "name",
            "--validate=false",
        ]);
        assert!(!err.is_empty());
    }
}

#[test]
fn kubectl_watch_sees_changes() {
    for store in STORES {
        let api = Api::start(store);
        let mut child = std::process::Command::new("kubectl")
            .env("KUBECONFIG", api.kubeconfig())
            .args([
                "--cache-dir",
                &api.dir.path().join("watch-cache").display().to_string(),
                "get",
                "pods",
                "-w",
                "--request-timeout=0",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("kubectl get -w");
        let stdout = child.stdout.take().expect("stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().expect("lock").push(l);
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(1500));
        api.kubectl_stdin(&["apply", "-f", "-"], Some(POD));
        api.ok(&["label", "pod", "web", "x=y"]);
        api.ok(&["delete", "pod", "web", "--wait=false"]);
        eventually("three watch rows for web", || {
            lines
                .lock()
                .expect("lock")
                .iter()
                .filter(|l| l.starts_with("web "))
                .count()
                >= 3
        });
        let _ = child.kill();
        let _ = child.wait();
        let got = lines.lock().expect("lock").clone();
        assert_eq!(
            got.iter().filter(|l| l.starts_with("NAME")).count(),
            1,
            "one header: {got:?}"
        );
    }
}

#[test]
fn namespaces_and_system_objects() {
    for store in STORES {
        let api = Api::start(store);
        let ns = api.ok(&["get", "ns"]);
        for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            assert!(ns.contains(n), "{ns}");
        }
        assert!(api.ok(&["get", "svc", "kubernetes"]).contains("10.96.0.1"));
        assert!(
            api.ok(&[
                "create",
                "namespace",
                "team-a",
                "--dry-run=client",
                "-o",
                "yaml"
            ])
            .contains("name: team-a")
        );
        assert!(
            api.kubectl_stdin(
                &["apply", "-f", "-"],
                Some("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n")
            )
            .status
            .success()
        );
        let err = api.fails(&["delete", "ns", "default"]);
        assert!(
            err.contains("forbidden") || err.contains("Forbidden"),
            "{err}"
        );
        let err = String::from_utf8_lossy(
            &api.kubectl_stdin(&["apply", "-n", "nope", "-f", "-"], Some(POD))
                .stderr,
        )
        .into_owned();
        assert!(err.contains("namespaces \"nope\" not found"), "{err}");
        // The apiserver's own endpoints, as tables with upstream columns.
        let ep = api.ok(&["get", "endpoints", "kubernetes"]);
        assert!(
            ep.starts_with("NAME") && ep.contains("ENDPOINTS") && ep.contains("kubernetes"),
            "{ep}"
        );
        let slices = api.ok(&["get", "endpointslices"]);
        assert!(
            slices.contains("ADDRESSTYPE") && slices.contains("IPv4"),
            "{slices}"
        );
        // Events: applied like any object, selected by the object they are about.
        let event = "apiVersion: v1\nkind: Event\nmetadata:\n  name: web.1\ninvolvedObject:\n  kind: Pod\n  name: web\n  namespace: default\nreason: Testing\nmessage: hello from a test\ntype: Normal\n";
        assert!(
            api.kubectl_stdin(&["apply", "-f", "-"], Some(event))
                .status
                .success()
        );
        let events = api.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web",
        ]);
        assert!(
            events.contains("LAST SEEN")
                && events.contains("Testing")
                && events.contains("hello from a test"),
            "{events}"
        );
        let none = api.kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=other",
        ]);
        assert!(
            text(&none).contains("No resources found"),
            "{}",
            text(&none)
        );
        let leases = api.kubectl(&["get", "leases", "-n", "kube-node-lease"]);
        assert!(
            text(&leases).contains("No resources found in kube-node-lease namespace."),
            "{}",
            text(&leases)
        );
        let resources = api.ok(&["api-resources"]);
        for r in [
            "pods",
            "nodes",
            "namespaces",
            "services",
            "leases",
            "events",
            "endpointslices",
        ] {
            assert!(resources.contains(r), "{r} missing from\n{resources}");
        }
    }
}

#[test]
fn kubectl_create_generators_send_protobuf() {
    for store in STORES {
        let api = Api::start(store);
        assert!(
            api.ok(&["create", "namespace", "team"])
                .contains("namespace/team created")
        );
        let err = api.fails(&["create", "namespace", "team"]);
        assert!(
            err.contains("Error from server (AlreadyExists): namespaces \"team\" already exists"),
            "{err}"
        );
        assert!(
            api.ok(&["create", "service", "nodeport", "web", "--tcp=80:8080"])
                .contains("service/web created")
        );
        assert!(
            api.ok(&[
                "create",
                "service",
                "clusterip",
                "headless",
                "--clusterip=None"
            ])
            .contains("created")
        );
        let svc = api.json(&["get", "svc", "web"]);
        assert_eq!(svc["spec"]["type"], "NodePort");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(svc["spec"]["selector"]["app"], "web");
        let node_port = svc["spec"]["ports"][0]["nodePort"]
            .as_i64()
            .expect("node port");
        assert!((30000..=32767).contains(&node_port), "{node_port}");
        assert!(
            svc["spec"]["clusterIP"]
                .as_str()
                .is_some_and(|ip| ip.starts_with("10."))
        );
        // A node port already taken is a 422 naming the field.
        let taken = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: other\nspec:\n  type: NodePort\n  ports:\n  - port: 81\n    nodePort: {node_port}\n"
        );
        let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(&taken));
        assert!(
            text(&out).contains("spec.ports[0].nodePort: Invalid value")
                && text(&out).contains("provided port is already allocated"),
            "{}",
            text(&out)
        );
    }
}

const DEPLOY_V1: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: miniorch/demo
        env:
        - {name: COLOUR, value: blue}
        - {name: SIZE, value: small}
        ports:
        - containerPort: 8080
      - name: sidecar
        image: miniorch/demo
";

/// The same deployment with one env var changed and one removed, a port changed and the
/// sidecar gone.
const DEPLOY_V2: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: miniorch/demo
        env:
        - {name: COLOUR, value: green}
        ports:
        - containerPort: 9090
";

#[test]
fn kubectl_reapply_removes_what_the_manifest_dropped() {
    for store in STORES {
        let api = Api::start(store);
        let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(DEPLOY_V1));
        assert!(
            text(&out).contains("deployment.apps/web created"),
            "{}",
            text(&out)
        );
        // A field set by someone else survives a re-apply (three-way merge).
        api.ok(&["label", "deploy", "web", "team=a"]);
        let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(DEPLOY_V2));
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            text(&out).contains("deployment.apps/web configured"),
            "{}",
            text(&out)
        );
        let d = api.json(&["get", "deploy", "web"]);
        let containers = d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(
            containers.len(),
            1,
            "{store:?}: the sidecar should be gone: {containers:?}"
        );
        assert_eq!(
            containers[0]["env"],
            serde_json::json!([{"name": "COLOUR", "value": "green"}]),
            "{store:?}"
        );
        assert_eq!(
            containers[0]["ports"],
            serde_json::json!([{"containerPort": 9090, "protocol": "TCP"}]),
            "{store:?}"
        );
        assert_eq!(d["metadata"]["labels"]["team"], "a");
        assert_eq!(d["metadata"]["generation"], 2, "{store:?}");
        let out = api.kubectl_stdin(&["apply", "-f", "-"], Some(DEPLOY_V2));
        assert!(
            text(&out).contains("deployment.apps/web unchanged"),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn kubectl_cordon_uncordon_and_wait() {
    for store in STORES {
        let api = Api::start(store);
        let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels: {kubernetes.io/hostname: n1}\n";
        assert!(
            api.kubectl_stdin(&["apply", "-f", "-"], Some(node))
                .status
                .success()
        );
        assert!(api.ok(&["cordon", "n1"]).contains("node/n1 cordoned"));
        let row = api.ok(&["get", "node", "n1", "--no-headers"]);
        assert!(row.contains("SchedulingDisabled"), "{row}");
        assert!(
            api.ok(&["cordon", "n1"])
                .contains("node/n1 already cordoned")
        );
        assert!(api.ok(&["uncordon", "n1"]).contains("node/n1 uncordoned"));
        assert_eq!(
            api.ok(&["get", "node", "n1", "-o", "jsonpath={.spec.unschedulable}"]),
            ""
        );

        // wait --for=condition: kubectl watches until the status shows it.
        api.kubectl_stdin(&["apply", "-f", "-"], Some(POD));
        // Nothing makes it Ready here (no agent): a short wait times out with exit 1...
        let short = api.kubectl(&["wait", "--for=condition=Ready", "pod/web", "--timeout=1s"]);
        assert_eq!(short.status.code(), Some(1), "{}", text(&short));
        assert!(
            text(&short).contains("timed out waiting for the condition"),
            "{}",
            text(&short)
        );
        // ...and a wait already running returns 0 once the status says Ready (it watches).
        let waiter = std::process::Command::new("kubectl")
            .env("KUBECONFIG", api.kubeconfig())
            .arg("--cache-dir")
            .arg(api.dir.path().join("wait-cache"))
            .args(["wait", "--for=condition=Ready", "pod/web", "--timeout=60s"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl wait");
        std::thread::sleep(std::time::Duration::from_secs(1));
        let status = serde_json::json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        let (code, body) = api.curl(
            "PATCH",
            "/api/v1/namespaces/default/pods/web/status",
            "application/merge-patch+json",
            &status.to_string(),
        );
        assert_eq!(code, 200, "{body}");
        let out = waiter.wait_with_output().expect("kubectl wait");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(
            text(&out).contains("pod/web condition met"),
            "{}",
            text(&out)
        );
        assert!(
            api.ok(&[
                "wait",
                "--for=jsonpath={.status.phase}=Running",
                "pod/web",
                "--timeout=30s"
            ])
            .contains("pod/web condition met")
        );
        // wait --for=delete returns once the object is gone.
        api.ok(&["delete", "pod", "web", "--wait=false"]);
        let out = api.kubectl(&["wait", "--for=delete", "pod/web", "--timeout=30s"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
}

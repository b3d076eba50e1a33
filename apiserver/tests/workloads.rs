//! The workload and config kinds through the real kubectl, over miniorch-store and over the real
//! etcd: apply, the upstream columns of `get` (and `-o wide`, and `get all`), describe, scale,
//! the `create` generators, status through /status only, 422s that name the field, and the
//! HorizontalPodAutoscaler served as autoscaling/v2 and autoscaling/v1 over one stored object.

mod support;

use std::collections::BTreeMap;

use serde_json::Value;
use support::{Api, STORES, text};

const WORKLOADS: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
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
        image: miniorch/demo:1
        ports:
        - containerPort: 8080
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: front
spec:
  selector:
    matchLabels:
      app: front
  template:
    metadata:
      labels:
        app: front
    spec:
      containers:
      - name: front
        image: miniorch/demo:1
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels:
      app: agent
  template:
    metadata:
      labels:
        app: agent
    spec:
      nodeSelector:
        kubernetes.io/os: linux
      containers:
      - name: agent
        image: miniorch/demo:1
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  selector:
    matchLabels:
      app: db
  template:
    metadata:
      labels:
        app: db
    spec:
      containers:
      - name: db
        image: miniorch/demo:1
---
apiVersion: batch/v1
kind: Job
metadata:
  name: pi
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: pi
        image: miniorch/demo:1
        command: [\"sh\", \"-c\", \"echo 3.14\"]
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: hello
spec:
  schedule: \"*/5 * * * *\"
  timeZone: Europe/Berlin
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - name: hello
            image: miniorch/demo:1
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: web
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: web
  maxReplicas: 5
  metrics:
  - type: Resource
    resource:
      name: cpu
      target:
        type: Utilization
        averageUtilization: 50
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  mode: fast
  level: \"3\"
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
stringData:
  password: s3cret
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: robot
";

/// One document of [`WORKLOADS`] by kind.
fn doc(kind: &str) -> String {
    WORKLOADS
        .split("---\n")
        .find(|d| d.contains(&format!("\nkind: {kind}\n")))
        .unwrap_or_else(|| panic!("no {kind} in WORKLOADS"))
        .to_string()
}

/// `kubectl get` output as rows of header → cell, cut at the header's column positions (cells
/// may be empty or hold single spaces, so splitting on whitespace would not do).
fn table(out: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let mut starts = Vec::new();
    let bytes = header.as_bytes();
    for i in 0..bytes.len() {
        let at_start = bytes[i] != b' ' && (i == 0 || (i >= 2 && &bytes[i - 2..i] == b"  "));
        if at_start {
            starts.push(i);
        }
    }
    let cut = |line: &str, n: usize| -> String {
        let from = starts[n].min(line.len());
        let to = starts
            .get(n + 1)
            .copied()
            .unwrap_or(line.len())
            .min(line.len());
        line.get(from..to).unwrap_or("").trim().to_string()
    };
    let names: Vec<String> = (0..starts.len()).map(|n| cut(header, n)).collect();
    lines
        .map(|l| {
            names
                .iter()
                .enumerate()
                .map(|(n, h)| (h.clone(), cut(l, n)))
                .collect()
        })
        .collect()
}

/// The column names of `kubectl get` output (names may hold single spaces).
fn headers(out: &str) -> Vec<String> {
    let first = out.lines().next().unwrap_or("");
    first
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn apply(api: &Api, manifest: &str) -> std::process::Output {
    api.kubectl_stdin(&["apply", "-f", "-"], Some(manifest))
}

#[test]
fn workloads_apply_get_wide_all_and_describe() {
    for store in STORES {
        let api = Api::start(store);
        let out = apply(&api, WORKLOADS);
        assert!(out.status.success(), "{}", text(&out));
        for created in [
            "deployment.apps/web created",
            "replicaset.apps/front created",
            "daemonset.apps/agent created",
            "statefulset.apps/db created",
            "job.batch/pi created",
            "cronjob.batch/hello created",
            "horizontalpodautoscaler.autoscaling/web created",
            "configmap/settings created",
            "secret/creds created",
            "serviceaccount/robot created",
        ] {
            assert!(text(&out).contains(created), "{created}: {}", text(&out));
        }
        let again = text(&apply(&api, WORKLOADS));
        for unchanged in [
            "deployment.apps/web unchanged",
            "daemonset.apps/agent unchanged",
            "statefulset.apps/db unchanged",
            "job.batch/pi unchanged",
            "cronjob.batch/hello unchanged",
            "horizontalpodautoscaler.autoscaling/web unchanged",
        ] {
            assert!(again.contains(unchanged), "{unchanged}: {again}");
        }

        // The upstream columns of each kind, and a row.
        for (kind, want_headers, want_row) in [
            (
                "deployments",
                vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
                vec![
                    ("NAME", "web"),
                    ("READY", "0/2"),
                    ("UP-TO-DATE", "0"),
                    ("AVAILABLE", "0"),
                ],
            ),
            (
                "rs",
                vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
                vec![
                    ("NAME", "front"),
                    ("DESIRED", "1"),
                    ("CURRENT", "0"),
                    ("READY", "0"),
                ],
            ),
            (
                "ds",
                vec![
                    "NAME",
                    "DESIRED",
                    "CURRENT",
                    "READY",
                    "UP-TO-DATE",
                    "AVAILABLE",
                    "NODE SELECTOR",
                    "AGE",
                ],
                vec![
                    ("NAME", "agent"),
                    ("NODE SELECTOR", "kubernetes.io/os=linux"),
                ],
            ),
            (
                "sts",
                vec!["NAME", "READY", "AGE"],
                vec![("NAME", "db"), ("READY", "0/1")],
            ),
            (
                "jobs",
                vec!["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
                vec![
                    ("NAME", "pi"),
                    ("STATUS", "Running"),
                    ("COMPLETIONS", "0/1"),
                    ("DURATION", ""),
                ],
            ),
            (
                "cj",
                vec![
                    "NAME",
                    "SCHEDULE",
                    "TIMEZONE",
                    "SUSPEND",
                    "ACTIVE",
                    "LAST SCHEDULE",
                    "AGE",
                ],
                vec![
                    ("NAME", "hello"),
                    ("SCHEDULE", "*/5 * * * *"),
                    ("TIMEZONE", "Europe/Berlin"),
                    ("SUSPEND", "False"),
                    ("ACTIVE", "0"),
                    ("LAST SCHEDULE", "<none>"),
                ],
            ),
            (
                "hpa",
                vec![
                    "NAME",
                    "REFERENCE",
                    "TARGETS",
                    "MINPODS",
                    "MAXPODS",
                    "REPLICAS",
                    "AGE",
                ],
                vec![
                    ("NAME", "web"),
                    ("REFERENCE", "Deployment/web"),
                    ("TARGETS", "cpu: <unknown>/50%"),
                    ("MINPODS", "1"),
                    ("MAXPODS", "5"),
                    ("REPLICAS", "0"),
                ],
            ),
            (
                "cm",
                vec!["NAME", "DATA", "AGE"],
                vec![("NAME", "settings"), ("DATA", "2")],
            ),
            (
                "secrets",
                vec!["NAME", "TYPE", "DATA", "AGE"],
                vec![("NAME", "creds"), ("TYPE", "Opaque"), ("DATA", "1")],
            ),
            (
                "sa",
                vec!["NAME", "SECRETS", "AGE"],
                vec![("NAME", "robot"), ("SECRETS", "0")],
            ),
        ] {
            let out = api.ok(&["get", kind]);
            assert_eq!(headers(&out), want_headers, "{kind}:\n{out}");
            let rows = table(&out);
            let row = rows
                .iter()
                .find(|r| r.get("NAME") == Some(&want_row[0].1.to_string()))
                .unwrap_or_else(|| panic!("{kind}: no row {:?} in\n{out}", want_row[0]));
            for (col, want) in want_row {
                assert_eq!(row[col], want, "{kind} {col}:\n{out}");
            }
        }

        // -o wide adds Containers, Images and the selector.
        for (kind, extra, cells) in [
            (
                "deploy",
                vec!["CONTAINERS", "IMAGES", "SELECTOR"],
                vec![
                    ("CONTAINERS", "web"),
                    ("IMAGES", "miniorch/demo:1"),
                    ("SELECTOR", "app=web"),
                ],
            ),
            (
                "rs",
                vec!["CONTAINERS", "IMAGES", "SELECTOR"],
                vec![("SELECTOR", "app=front")],
            ),
            (
                "ds",
                vec!["CONTAINERS", "IMAGES", "SELECTOR"],
                vec![("SELECTOR", "app=agent")],
            ),
            (
                "sts",
                vec!["CONTAINERS", "IMAGES"],
                vec![("IMAGES", "miniorch/demo:1")],
            ),
            (
                "jobs",
                vec!["CONTAINERS", "IMAGES", "SELECTOR"],
                vec![("CONTAINERS", "pi")],
            ),
            (
                "cj",
                vec!["CONTAINERS", "IMAGES", "SELECTOR"],
                vec![("CONTAINERS", "hello")],
            ),
        ] {
            let out = api.ok(&["get", kind, "-o", "wide"]);
            let h = headers(&out);
            assert!(
                h.ends_with(&extra.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
                "{kind}: {h:?}"
            );
            let rows = table(&out);
            for (col, want) in cells {
                assert_eq!(rows[0][col], want, "{kind} {col}:\n{out}");
            }
        }
        let jobs = table(&api.ok(&["get", "jobs", "-o", "wide"]));
        assert!(
            jobs[0]["SELECTOR"].starts_with("batch.kubernetes.io/controller-uid="),
            "{jobs:?}"
        );

        // `get all` lists every kind in the category.
        let all = api.ok(&["get", "all"]);
        for name in [
            "service/kubernetes",
            "deployment.apps/web",
            "replicaset.apps/front",
            "daemonset.apps/agent",
            "statefulset.apps/db",
            "job.batch/pi",
            "cronjob.batch/hello",
            "horizontalpodautoscaler.autoscaling/web",
        ] {
            assert!(all.contains(name), "{name} missing from get all:\n{all}");
        }
        assert_eq!(
            all.matches("horizontalpodautoscaler.autoscaling/web ")
                .count(),
            1,
            "{all}"
        );

        // Server-side defaults and generation.
        let d = api.json(&["get", "deploy", "web"]);
        assert_eq!(d["metadata"]["generation"], 1);
        assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(
            d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
            "25%"
        );
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["containers"][0]["ports"][0]["protocol"], "TCP");
        assert!(
            pod.get("tolerations").is_none(),
            "pod-only defaults stay off templates"
        );
        let rs = api.json(&["get", "rs", "front"]);
        assert_eq!(rs["spec"]["replicas"], 1);
        let ds = api.json(&["get", "ds", "agent"]);
        assert_eq!(
            ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
            1
        );
        assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"], 0);
        assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(
            ds["metadata"]["annotations"]["deprecated.daemonset.template.generation"],
            "1"
        );
        let sts = api.json(&["get", "sts", "db"]);
        assert_eq!(sts["spec"]["replicas"], 1);
        assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"],
            0
        );
        assert_eq!(
            sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
            "Retain"
        );
        assert_eq!(
            sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
            "Retain"
        );
        let job = api.json(&["get", "job", "pi"]);
        let uid = job["metadata"]["uid"].as_str().expect("uid").to_string();
        assert_eq!(job["spec"]["parallelism"], 1);
        assert_eq!(job["spec"]["completions"], 1);
        assert_eq!(job["spec"]["backoffLimit"], 6);
        assert_eq!(job["spec"]["completionMode"], "NonIndexed");
        assert_eq!(job["spec"]["suspend"], false);
        assert_eq!(
            job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            uid.as_str()
        );
        let labels = &job["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(labels["job-name"], "pi");
        assert_eq!(labels["controller-uid"], uid.as_str());
        let cj = api.json(&["get", "cj", "hello"]);
        assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(cj["spec"]["suspend"], false);
        assert_eq!(cj["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(cj["spec"]["failedJobsHistoryLimit"], 1);
        let hpa = api.json(&["get", "hpa", "web"]);
        assert_eq!(hpa["apiVersion"], "autoscaling/v2");
        assert_eq!(hpa["spec"]["minReplicas"], 1);

        // describe reads each kind (and, for some, its pods or replica sets).
        for (what, want) in [
            (
                vec!["describe", "deploy", "web"],
                vec![
                    "Selector:               app=web",
                    "RollingUpdateStrategy:  25% max unavailable, 25% max surge",
                ],
            ),
            (
                vec!["describe", "rs", "front"],
                vec!["Replicas:     0 current / 1 desired"],
            ),
            (
                vec!["describe", "ds", "agent"],
                vec!["Node-Selector:  kubernetes.io/os=linux"],
            ),
            (
                vec!["describe", "sts", "db"],
                vec!["Replicas:           1 desired | 0 total"],
            ),
            (
                vec!["describe", "job", "pi"],
                vec!["Completion Mode:  NonIndexed", "Backoff Limit:    6"],
            ),
            (
                vec!["describe", "cj", "hello"],
                vec![
                    "Schedule:                      */5 * * * *",
                    "Concurrency Policy:            Allow",
                ],
            ),
            (
                vec!["describe", "hpa", "web"],
                vec![
                    "Reference:",
                    "Deployment/web",
                    "Min replicas:",
                    "Max replicas:",
                ],
            ),
            (vec!["describe", "cm", "settings"], vec!["mode:", "fast"]),
            (
                vec!["describe", "secret", "creds"],
                vec!["Type:  Opaque", "password:  6 bytes"],
            ),
            (
                vec!["describe", "sa", "robot"],
                vec!["Name:                robot"],
            ),
        ] {
            let out = api.ok(&what);
            for w in want {
                assert!(out.contains(w), "{what:?}: missing {w:?} in\n{out}");
            }
        }
    }
}

#[test]
fn scale_status_and_generation() {
    for store in STORES {
        let api = Api::start(store);
        for kind in ["Deployment", "ReplicaSet", "StatefulSet", "DaemonSet"] {
            assert!(apply(&api, &doc(kind)).status.success());
        }
        let spec_and_generation = |what: &str| {
            let v = api.json(&["get", what]);
            (
                v["spec"]["replicas"].clone(),
                v["metadata"]["generation"].clone(),
            )
        };
        assert!(
            api.ok(&["scale", "deployment/web", "--replicas=3"])
                .contains("deployment.apps/web scaled")
        );
        assert_eq!(spec_and_generation("deployment/web"), (3.into(), 2.into()));
        // --current-replicas reads /scale and PUTs it back with no Content-Type.
        api.ok(&[
            "scale",
            "deployment/web",
            "--current-replicas=3",
            "--replicas=4",
        ]);
        assert_eq!(spec_and_generation("deployment/web"), (4.into(), 3.into()));
        let err = api.fails(&[
            "scale",
            "deployment/web",
            "--current-replicas=3",
            "--replicas=5",
        ]);
        assert!(err.contains("Expected replicas to be 3, was 4"), "{err}");
        let err = api.fails(&["scale", "deployment/web", "--replicas=-1"]);
        assert!(!err.is_empty());

        api.ok(&["scale", "sts/db", "--replicas=2"]);
        assert_eq!(spec_and_generation("sts/db"), (2.into(), 2.into()));
        api.ok(&["scale", "rs/front", "--replicas=0"]);
        assert_eq!(spec_and_generation("rs/front"), (0.into(), 2.into()));
        let scale: Value = serde_json::from_str(&api.ok(&[
            "get",
            "--raw",
            "/apis/apps/v1/namespaces/default/deployments/web/scale",
        ]))
        .expect("scale json");
        assert_eq!(scale["kind"], "Scale");
        assert_eq!(scale["apiVersion"], "autoscaling/v1");
        assert_eq!(scale["spec"]["replicas"], 4);
        assert_eq!(scale["status"]["selector"], "app=web");
        // DaemonSets have no scale subresource.
        api.fails(&["scale", "ds/agent", "--replicas=2"]);

        // Status changes only through /status; spec changes there are ignored.
        assert!(
            api.ok(&[
                "patch",
                "deploy",
                "web",
                "--type",
                "merge",
                "-p",
                r#"{"status":{"replicas":9}}"#
            ])
            .contains("(no change)")
        );
        api.ok(&[
            "patch",
            "deploy",
            "web",
            "--subresource=status",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"replicas":1},"status":{"replicas":4,"readyReplicas":2,"updatedReplicas":4,"availableReplicas":2}}"#,
        ]);
        let rows = table(&api.ok(&["get", "deploy", "web"]));
        assert_eq!(
            (
                rows[0]["READY"].as_str(),
                rows[0]["UP-TO-DATE"].as_str(),
                rows[0]["AVAILABLE"].as_str()
            ),
            ("2/4", "4", "2")
        );
        assert_eq!(spec_and_generation("deployment/web"), (4.into(), 3.into()));
        // The deployment controller records the revision through /status: no new generation.
        api.ok(&[
            "patch",
            "deploy",
            "web",
            "--subresource=status",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"annotations":{"deployment.kubernetes.io/revision":"1"},"labels":{"x":"y"}}}"#,
        ]);
        let d = api.json(&["get", "deploy", "web"]);
        assert_eq!(
            d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "1"
        );
        assert!(
            d["metadata"].get("labels").is_none(),
            "labels change only through the main resource: {d}"
        );
        assert_eq!(d["metadata"]["generation"], 3);

        // A template change bumps generation; an annotation change does too, as upstream.
        api.ok(&["set", "image", "deployment/web", "web=miniorch/demo:2"]);
        assert_eq!(spec_and_generation("deployment/web").1, 4);
        api.ok(&["annotate", "deployment/web", "note=x"]);
        assert_eq!(spec_and_generation("deployment/web").1, 5);
        // ...but not for a replica set, whose generation follows its spec only.
        api.ok(&["annotate", "rs/front", "note=x"]);
        assert_eq!(spec_and_generation("rs/front").1, 2);
    }
}

#[test]
fn create_generators_secrets_and_field_selectors() {
    for store in STORES {
        let api = Api::start(store);
        // kubectl 1.33 sends these generators' objects as protobuf.
        for (args, want) in [
            (
                vec![
                    "create",
                    "configmap",
                    "lit",
                    "--from-literal=a=1",
                    "--from-literal=b=2",
                ],
                "configmap/lit created",
            ),
            (
                vec![
                    "create",
                    "secret",
                    "generic",
                    "pw",
                    "--from-literal=password=hunter2",
                ],
                "secret/pw created",
            ),
            (
                vec![
                    "create",
                    "deployment",
                    "gen",
                    "--image=miniorch/demo:1",
                    "--replicas=2",
                ],
                "deployment.apps/gen created",
            ),
            (
                vec![
                    "create",
                    "job",
                    "once",
                    "--image=miniorch/demo:1",
                    "--",
                    "echo",
                    "hi",
                ],
                "job.batch/once created",
            ),
            (
                vec![
                    "create",
                    "cronjob",
                    "tick",
                    "--image=miniorch/demo:1",
                    "--schedule=@hourly",
                    "--",
                    "echo",
                    "tick",
                ],
                "cronjob.batch/tick created",
            ),
            (
                vec!["create", "serviceaccount", "bot"],
                "serviceaccount/bot created",
            ),
        ] {
            assert!(api.ok(&args).contains(want), "{args:?}");
        }
        assert_eq!(
            api.ok(&["get", "cm", "lit", "-o", "jsonpath={.data.a},{.data.b}"]),
            "1,2"
        );
        assert_eq!(
            api.ok(&["get", "secret", "pw", "-o", "jsonpath={.data.password}"]),
            "aHVudGVyMg=="
        );
        assert_eq!(
            api.ok(&["get", "secret", "pw", "-o", "jsonpath={.type}"]),
            "Opaque"
        );
        let rows = table(&api.ok(&["get", "deploy", "gen"]));
        assert_eq!(rows[0]["READY"], "0/2");
        let rows = table(&api.ok(&["get", "cj", "tick"]));
        assert_eq!(rows[0]["SCHEDULE"], "@hourly");

        // stringData is merged into data and never stored.
        let out = apply(
            &api,
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: tls\ntype: kubernetes.io/tls\ndata:\n  tls.crt: Y2VydA==\nstringData:\n  tls.key: key\n",
        );
        assert!(out.status.success(), "{}", text(&out));
        let s = api.json(&["get", "secret", "tls"]);
        assert_eq!(s["data"]["tls.crt"], "Y2VydA==");
        assert_eq!(s["data"]["tls.key"], "a2V5");
        assert!(s.get("stringData").is_none(), "{s}");
        // A TLS secret needs its key; its type may not change.
        let err = text(&apply(
            &api,
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: tls2\ntype: kubernetes.io/tls\ndata:\n  tls.crt: Y2VydA==\n",
        ));
        assert!(err.contains("data[tls.key]: Required value"), "{err}");
        let err = api.fails(&[
            "patch",
            "secret",
            "tls",
            "--type",
            "merge",
            "-p",
            r#"{"type":"Opaque"}"#,
        ]);
        assert!(
            err.contains("type: Invalid value: \"Opaque\": field is immutable"),
            "{err}"
        );

        // Field selectors upstream supports for these kinds.
        let tls = api.ok(&[
            "get",
            "secrets",
            "--field-selector",
            "type=kubernetes.io/tls",
            "-o",
            "name",
        ]);
        assert_eq!(tls.trim(), "secret/tls");
        let opaque = api.ok(&[
            "get",
            "secrets",
            "--field-selector",
            "type!=kubernetes.io/tls",
            "-o",
            "name",
        ]);
        assert_eq!(opaque.trim(), "secret/pw");
        let jobs = api.ok(&[
            "get",
            "jobs",
            "--field-selector",
            "status.successful=0",
            "-o",
            "name",
        ]);
        assert_eq!(jobs.trim(), "job.batch/once");
        assert!(
            api.ok(&[
                "get",
                "jobs",
                "--field-selector",
                "status.successful=1",
                "-o",
                "name"
            ])
            .trim()
            .is_empty()
        );
        let err = api.fails(&["get", "cm", "--field-selector", "type=x"]);
        assert!(err.contains("field label not supported: type"), "{err}");

        // Immutable config maps keep their data.
        assert!(apply(&api, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: frozen\nimmutable: true\ndata:\n  a: \"1\"\n").status.success());
        let err = api.fails(&[
            "patch",
            "cm",
            "frozen",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"a":"2"}}"#,
        ]);
        assert!(
            err.contains("data: Forbidden: field is immutable when `immutable` is set"),
            "{err}"
        );
    }
}

#[test]
fn invalid_manifests_are_422_naming_the_field() {
    for store in STORES {
        let api = Api::start(store);
        let deployment = doc("Deployment");
        for (manifest, want) in [
            (
                deployment.replace("replicas: 2", "replicas: -1"),
                "The Deployment \"web\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                deployment.replacen("app: web", "app: other", 1),
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`",
            ),
            (
                deployment.replace("  selector:\n    matchLabels:\n      app: web\n", ""),
                "spec.selector: Required value",
            ),
            (
                doc("Job").replace("restartPolicy: Never", "restartPolicy: Always"),
                "The Job \"pi\" is invalid: spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\"",
            ),
            (
                doc("Job").replace("      restartPolicy: Never\n", ""),
                "spec.template.spec.restartPolicy: Unsupported value: \"Always\"",
            ),
            (
                doc("CronJob").replace("*/5 * * * *", "61 * * * *"),
                "The CronJob \"hello\" is invalid: spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61",
            ),
            (
                doc("CronJob").replace("*/5 * * * *", "every day"),
                "spec.schedule: Invalid value: \"every day\": expected exactly 5 fields, found 2",
            ),
            (
                doc("CronJob").replace("Europe/Berlin", "Mars/Olympus"),
                "spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus",
            ),
            (
                doc("HorizontalPodAutoscaler").replace("maxReplicas: 5", "maxReplicas: 0"),
                "spec.maxReplicas: Invalid value: 0: must be greater than 0",
            ),
        ] {
            let out = apply(&api, &manifest);
            assert!(!out.status.success(), "should fail:\n{manifest}");
            assert!(text(&out).contains(want), "want {want:?} in {}", text(&out));
        }
        let out = apply(
            &api,
            &doc("DaemonSet").replace(
                "      containers:",
                "      restartPolicy: Never\n      containers:",
            ),
        );
        assert!(
            text(&out).contains("spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\""),
            "{}",
            text(&out)
        );

        // The Status is a 422 with the field in its causes.
        let bad = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "neg"},
            "spec": {"replicas": -2, "selector": {"matchLabels": {"app": "x"}},
                     "template": {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let (code, body) = api.curl(
            "POST",
            "/apis/apps/v1/namespaces/default/deployments",
            "application/json",
            &bad.to_string(),
        );
        assert_eq!(code, 422, "{body}");
        let status: Value = serde_json::from_str(&body).expect("status");
        assert_eq!(status["reason"], "Invalid");
        assert_eq!(status["details"]["kind"], "Deployment");
        assert_eq!(status["details"]["group"], "apps");
        assert_eq!(status["details"]["causes"][0]["field"], "spec.replicas");

        // The selector of a deployment and of a job may not change.
        assert!(apply(&api, &deployment).status.success());
        let moved = deployment.replace("app: web", "app: moved");
        let err = text(&apply(&api, &moved));
        assert!(
            err.contains("spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"moved\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"),
            "{err}"
        );
        assert!(apply(&api, &doc("Job")).status.success());
        let err = text(&apply(&api, &doc("Job").replace("echo 3.14", "echo 2.71")));
        assert!(err.contains("spec.template: Invalid value"), "{err}");
        assert!(err.contains("field is immutable"), "{err}");
    }
}

const HPA_V1: &str = "apiVersion: autoscaling/v1
kind: HorizontalPodAutoscaler
metadata:
  name: front
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: ReplicaSet
    name: front
  minReplicas: 2
  maxReplicas: 4
  targetCPUUtilizationPercentage: 70
";

const HPA_V2_TWO_METRICS: &str = "apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: busy
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: web
  maxReplicas: 6
  metrics:
  - type: Resource
    resource:
      name: cpu
      target:
        type: Utilization
        averageUtilization: 60
  - type: Pods
    pods:
      metric:
        name: requests_per_second
      target:
        type: AverageValue
        averageValue: \"10\"
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 60
";

#[test]
fn hpa_is_served_in_v1_and_v2() {
    const V1: &str = "horizontalpodautoscalers.v1.autoscaling";
    const V2: &str = "horizontalpodautoscalers.v2.autoscaling";
    for store in STORES {
        let api = Api::start(store);
        // Created in v2, read through v1.
        assert!(
            apply(&api, &doc("HorizontalPodAutoscaler"))
                .status
                .success()
        );
        let v1 = api.json(&["get", V1, "web"]);
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["spec"]["minReplicas"], 1);

        // Created in v1, read through v2 (the default version kubectl picks).
        let out = apply(&api, HPA_V1);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&apply(&api, HPA_V1)).contains("unchanged"));
        let v2 = api.json(&["get", "hpa", "front"]);
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(v2["spec"]["metrics"][0]["type"], "Resource");
        assert_eq!(v2["spec"]["metrics"][0]["resource"]["name"], "cpu");
        assert_eq!(
            v2["spec"]["metrics"][0]["resource"]["target"]["type"],
            "Utilization"
        );
        assert_eq!(
            v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            70
        );
        assert_eq!(api.json(&["get", V2, "front"])["spec"]["minReplicas"], 2);

        // v2-only fields survive a patch through v1.
        assert!(apply(&api, HPA_V2_TWO_METRICS).status.success());
        let patched = api.json(&[
            "patch",
            V1,
            "busy",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"maxReplicas":8,"targetCPUUtilizationPercentage":65}}"#,
        ]);
        assert_eq!(patched["apiVersion"], "autoscaling/v1");
        assert_eq!(patched["spec"]["maxReplicas"], 8);
        let v2 = api.json(&["get", "hpa", "busy"]);
        assert_eq!(v2["spec"]["maxReplicas"], 8);
        let metrics = v2["spec"]["metrics"].as_array().expect("metrics");
        assert_eq!(metrics.len(), 2, "{v2}");
        assert!(
            metrics
                .iter()
                .any(|m| m["pods"]["metric"]["name"] == "requests_per_second")
        );
        assert!(
            metrics
                .iter()
                .any(|m| m["resource"]["target"]["averageUtilization"] == 65)
        );
        assert_eq!(
            v2["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            60
        );
        assert_eq!(
            v2["spec"]["behavior"]["scaleUp"]["policies"][0]["type"],
            "Pods"
        );
        assert!(
            v2["metadata"]["annotations"]
                .get("autoscaling.alpha.kubernetes.io/metrics")
                .is_none(),
            "{v2}"
        );

        // Status written through v1's /status shows in v2 and in the table.
        api.ok(&[
            "patch", V1, "web", "--subresource=status", "--type", "merge", "-p",
            r#"{"status":{"currentReplicas":3,"desiredReplicas":3,"currentCPUUtilizationPercentage":40}}"#,
        ]);
        let out = api.ok(&["get", "hpa"]);
        assert_eq!(
            headers(&out),
            vec![
                "NAME",
                "REFERENCE",
                "TARGETS",
                "MINPODS",
                "MAXPODS",
                "REPLICAS",
                "AGE"
            ]
        );
        let rows = table(&out);
        let row = |name: &str| {
            rows.iter()
                .find(|r| r["NAME"] == name)
                .expect("row")
                .clone()
        };
        assert_eq!(row("web")["TARGETS"], "cpu: 40%/50%");
        assert_eq!(row("web")["REPLICAS"], "3");
        assert_eq!(row("front")["REFERENCE"], "ReplicaSet/front");
        assert_eq!(row("busy")["TARGETS"], "<unknown>/10, cpu: <unknown>/65%");
        assert!(api.ok(&["get", V1]).contains("cpu: 40%/50%"));

        // Lists and watches through v1 carry v1 objects.
        let list: Value = serde_json::from_str(&api.ok(&[
            "get",
            "--raw",
            "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers",
        ]))
        .expect("list");
        assert_eq!(list["kind"], "HorizontalPodAutoscalerList");
        assert_eq!(list["apiVersion"], "autoscaling/v1");
        assert_eq!(list["items"].as_array().map(Vec::len), Some(3));
        assert!(
            list["items"]
                .as_array()
                .expect("items")
                .iter()
                .all(|i| i["apiVersion"] == "autoscaling/v1")
        );
        let watch = api.ok(&[
            "get",
            "--raw",
            "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers?watch=true&timeoutSeconds=1",
        ]);
        let events: Vec<Value> = watch
            .lines()
            .map(|l| serde_json::from_str(l).expect("event"))
            .collect();
        assert_eq!(events.len(), 3, "{watch}");
        for e in &events {
            assert_eq!(e["type"], "ADDED");
            assert_eq!(e["object"]["apiVersion"], "autoscaling/v1");
        }

        // Errors name v1's fields where v1 has them.
        let err = text(&apply(
            &api,
            &HPA_V1
                .replace("name: front\n", "name: bad\n")
                .replace("maxReplicas: 4", "maxReplicas: 1"),
        ));
        assert!(
            err.contains(
                "spec.maxReplicas: Invalid value: 1: must be greater than or equal to `minReplicas`"
            ),
            "{err}"
        );
        api.ok(&["delete", V1, "front"]);
        api.fails(&["get", "hpa", "front"]);
    }
}

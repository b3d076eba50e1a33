//! `mctl describe TYPE NAME`: a readable account of one object and its recent events, laid out
//! as `kubectl describe` lays it out (one tabwriter over the whole text, padding 2).

use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::Value;

use crate::api::{Ctx, encode};
use crate::output::describe_time;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Resource type (pod, node, ...) or TYPE/NAME.
    pub resource: String,
    /// Names of the objects to describe.
    pub names: Vec<String>,
}

pub async fn run(ctx: &Ctx, mut args: Args) -> anyhow::Result<()> {
    if let Some((kind, name)) = args.resource.clone().split_once('/') {
        args.resource = kind.to_string();
        args.names.insert(0, name.to_string());
    }
    if args.names.is_empty() {
        anyhow::bail!(
            "say which {} to describe: mctl describe {} NAME",
            args.resource,
            args.resource
        );
    }
    let r = ctx
        .resources()
        .await?
        .find(&args.resource)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the server doesn't have a resource type {:?}",
                args.resource
            )
        })?
        .clone();
    for (i, name) in args.names.iter().enumerate() {
        let obj = ctx.get(&r.path(Some(&ctx.namespace), Some(name))).await?;
        let events = events_for(ctx, &obj, &r.kind).await.unwrap_or_default();
        let mut text = match r.kind.as_str() {
            "Pod" => pod(&obj),
            "Node" => node(ctx, &obj).await,
            _ => generic(&obj),
        };
        text.push_str(&events_text(&events));
        if i > 0 {
            println!();
            println!();
        }
        let mut tw = tabwriter::TabWriter::new(std::io::stdout().lock()).padding(2);
        tw.write_all(text.as_bytes())?;
        tw.flush()?;
    }
    Ok(())
}

async fn events_for(ctx: &Ctx, obj: &Value, kind: &str) -> anyhow::Result<Vec<Value>> {
    let m = &obj["metadata"];
    let ns = m["namespace"].as_str().unwrap_or_default();
    let selector = format!(
        "involvedObject.name={},involvedObject.namespace={ns},involvedObject.kind={kind},involvedObject.uid={}",
        m["name"].as_str().unwrap_or_default(),
        m["uid"].as_str().unwrap_or_default()
    );
    let events_ns = if ns.is_empty() { "default" } else { ns };
    let list = ctx
        .get(&format!(
            "/api/v1/namespaces/{events_ns}/events?fieldSelector={}",
            encode(&selector)
        ))
        .await?;
    let mut items = list["items"].as_array().cloned().unwrap_or_default();
    items.sort_by_key(|e| last_seen(e).unwrap_or_default());
    Ok(items)
}

fn last_seen(e: &Value) -> Option<String> {
    ["lastTimestamp", "eventTime", "firstTimestamp"]
        .iter()
        .find_map(|k| e[*k].as_str().map(String::from))
        .or_else(|| {
            e["metadata"]["creationTimestamp"]
                .as_str()
                .map(String::from)
        })
}

fn age_of(s: Option<&str>) -> String {
    let t = s.and_then(|s| s.parse::<jiff::Timestamp>().ok());
    miniorch_api::format::age(t, jiff::Timestamp::now())
}

fn events_text(events: &[Value]) -> String {
    if events.is_empty() {
        return "Events:\t<none>\n".into();
    }
    let mut s = String::from(
        "Events:\n  Type\tReason\tAge\tFrom\tMessage\n  ----\t------\t----\t----\t-------\n",
    );
    for e in events {
        let count = e["count"].as_i64().unwrap_or(1);
        let last = last_seen(e);
        let first = e["firstTimestamp"]
            .as_str()
            .map(String::from)
            .or_else(|| last.clone());
        let age = if count > 1 {
            format!(
                "{} (x{count} over {})",
                age_of(last.as_deref()),
                age_of(first.as_deref())
            )
        } else {
            age_of(last.as_deref())
        };
        let from = e["source"]["component"]
            .as_str()
            .or(e["reportingComponent"].as_str())
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {}\t{}\t{age}\t{from}\t{}",
            e["type"].as_str().unwrap_or_default(),
            e["reason"].as_str().unwrap_or_default(),
            e["message"].as_str().unwrap_or_default().trim()
        );
    }
    s
}

/// `key=value` lines, the first after the label, the rest indented under it.
fn map_lines(s: &mut String, label: &str, map: &Value, skip: &[&str]) {
    let entries: Vec<(String, String)> = map
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    if entries.is_empty() {
        let _ = writeln!(s, "{label}:\t<none>");
        return;
    }
    for (i, (k, v)) in entries.iter().enumerate() {
        let sep = if label == "Annotations" { ": " } else { "=" };
        if i == 0 {
            let _ = writeln!(s, "{label}:\t{k}{sep}{v}");
        } else {
            let _ = writeln!(s, "\t{k}{sep}{v}");
        }
    }
}

fn str_or<'a>(v: &'a Value, default: &'a str) -> &'a str {
    v.as_str().filter(|s| !s.is_empty()).unwrap_or(default)
}

fn pod(p: &Value) -> String {
    let m = &p["metadata"];
    let spec = &p["spec"];
    let status = &p["status"];
    let mut s = String::new();
    let _ = writeln!(s, "Name:\t{}", str_or(&m["name"], ""));
    let _ = writeln!(s, "Namespace:\t{}", str_or(&m["namespace"], ""));
    let _ = writeln!(s, "Priority:\t{}", spec["priority"].as_i64().unwrap_or(0));
    if let Some(sa) = spec["serviceAccountName"].as_str() {
        let _ = writeln!(s, "Service Account:\t{sa}");
    }
    let node = match (spec["nodeName"].as_str(), status["hostIP"].as_str()) {
        (Some(n), Some(ip)) => format!("{n}/{ip}"),
        (Some(n), None) => n.to_string(),
        _ => "<none>".into(),
    };
    let _ = writeln!(s, "Node:\t{node}");
    if let Some(t) = status["startTime"].as_str() {
        let _ = writeln!(s, "Start Time:\t{}", describe_time(t));
    }
    map_lines(&mut s, "Labels", &m["labels"], &[]);
    map_lines(
        &mut s,
        "Annotations",
        &m["annotations"],
        &["kubectl.kubernetes.io/last-applied-configuration"],
    );
    if let Some(t) = m["deletionTimestamp"].as_str() {
        let _ = writeln!(s, "Status:\tTerminating (lasts {})", age_of(Some(t)));
        let _ = writeln!(
            s,
            "Termination Grace Period:\t{}s",
            m["deletionGracePeriodSeconds"].as_i64().unwrap_or(0)
        );
    } else {
        let _ = writeln!(s, "Status:\t{}", str_or(&status["phase"], "Unknown"));
    }
    if let Some(r) = status["reason"].as_str() {
        let _ = writeln!(s, "Reason:\t{r}");
    }
    if let Some(msg) = status["message"].as_str() {
        let _ = writeln!(s, "Message:\t{msg}");
    }
    let _ = writeln!(s, "IP:\t{}", str_or(&status["podIP"], ""));
    match status["podIPs"].as_array().filter(|a| !a.is_empty()) {
        Some(ips) => {
            s.push_str("IPs:\n");
            for ip in ips {
                let _ = writeln!(s, "  IP:\t{}", str_or(&ip["ip"], ""));
            }
        }
        None => s.push_str("IPs:\t<none>\n"),
    }
    if let Some(owner) = m["ownerReferences"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["controller"] == true))
    {
        let _ = writeln!(
            s,
            "Controlled By:\t{}/{}",
            str_or(&owner["kind"], ""),
            str_or(&owner["name"], "")
        );
    }
    let statuses = status["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(init) = spec["initContainers"].as_array().filter(|a| !a.is_empty()) {
        let init_statuses = status["initContainerStatuses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        s.push_str("Init Containers:\n");
        for c in init {
            container(&mut s, c, &init_statuses);
        }
    }
    s.push_str("Containers:\n");
    for c in spec["containers"].as_array().into_iter().flatten() {
        container(&mut s, c, &statuses);
    }
    if let Some(conds) = status["conditions"].as_array().filter(|a| !a.is_empty()) {
        s.push_str("Conditions:\n  Type\tStatus\n");
        for c in conds {
            let _ = writeln!(
                s,
                "  {} \t{} ",
                str_or(&c["type"], ""),
                str_or(&c["status"], "")
            );
        }
    }
    let volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    if volumes.is_empty() {
        s.push_str("Volumes:\t<none>\n");
    } else {
        s.push_str("Volumes:\n");
        for v in volumes {
            let _ = writeln!(s, "  {}:", str_or(&v["name"], ""));
            let kind = v
                .as_object()
                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
                .unwrap_or_default();
            let _ = writeln!(s, "    Type:\t{kind}");
        }
    }
    let _ = writeln!(s, "QoS Class:\t{}", str_or(&status["qosClass"], ""));
    let selectors = &spec["nodeSelector"];
    match selectors.as_object().filter(|m| !m.is_empty()) {
        Some(_) => map_lines(&mut s, "Node-Selectors", selectors, &[]),
        None => s.push_str("Node-Selectors:\t<none>\n"),
    }
    let tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
    if tolerations.is_empty() {
        s.push_str("Tolerations:\t<none>\n");
    }
    for (i, t) in tolerations.iter().enumerate() {
        let mut text = str_or(&t["key"], "").to_string();
        if let Some(v) = t["value"].as_str().filter(|v| !v.is_empty()) {
            let _ = write!(text, "={v}");
        }
        if let Some(e) = t["effect"].as_str().filter(|e| !e.is_empty()) {
            let _ = write!(text, ":{e}");
        }
        if t["operator"] == "Exists" && t["value"].as_str().is_none_or(str::is_empty) {
            text.push_str(" op=Exists");
        }
        if let Some(secs) = t["tolerationSeconds"].as_i64() {
            let _ = write!(text, " for {secs}s");
        }
        let label = if i == 0 { "Tolerations:" } else { "" };
        let _ = writeln!(s, "{label}\t{text}");
    }
    s
}

fn container(s: &mut String, c: &Value, statuses: &[Value]) {
    let name = str_or(&c["name"], "");
    let st = statuses
        .iter()
        .find(|x| x["name"] == name)
        .cloned()
        .unwrap_or(Value::Null);
    let _ = writeln!(s, "  {name}:");
    if let Some(id) = st["containerID"].as_str() {
        let _ = writeln!(s, "    Container ID:\t{id}");
    }
    let _ = writeln!(s, "    Image:\t{}", str_or(&c["image"], ""));
    if let Some(id) = st["imageID"].as_str() {
        let _ = writeln!(s, "    Image ID:\t{id}");
    }
    let ports = c["ports"].as_array().cloned().unwrap_or_default();
    match ports.as_slice() {
        [] => s.push_str("    Port:\t<none>\n    Host Port:\t<none>\n"),
        [p] => {
            let proto = str_or(&p["protocol"], "TCP");
            let _ = writeln!(
                s,
                "    Port:\t{}/{proto}",
                p["containerPort"].as_i64().unwrap_or(0)
            );
            let _ = writeln!(
                s,
                "    Host Port:\t{}/{proto}",
                p["hostPort"].as_i64().unwrap_or(0)
            );
        }
        many => {
            let list = |k: &str| {
                many.iter()
                    .map(|p| {
                        format!(
                            "{}/{}",
                            p[k].as_i64().unwrap_or(0),
                            str_or(&p["protocol"], "TCP")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(s, "    Ports:\t{}", list("containerPort"));
            let _ = writeln!(s, "    Host Ports:\t{}", list("hostPort"));
        }
    }
    for (label, key) in [("Command", "command"), ("Args", "args")] {
        if let Some(items) = c[key].as_array().filter(|a| !a.is_empty()) {
            let _ = writeln!(s, "    {label}:");
            for i in items {
                let _ = writeln!(s, "      {}", i.as_str().unwrap_or_default());
            }
        }
    }
    if !st.is_null() {
        state(s, "State", &st["state"]);
    }
    if st["lastState"].as_object().is_some_and(|m| !m.is_empty()) {
        state(s, "Last State", &st["lastState"]);
    }
    if !st.is_null() {
        let _ = writeln!(
            s,
            "    Ready:\t{}",
            if st["ready"] == true { "True" } else { "False" }
        );
        let _ = writeln!(
            s,
            "    Restart Count:\t{}",
            st["restartCount"].as_i64().unwrap_or(0)
        );
    }
    for (label, key) in [("Limits", "limits"), ("Requests", "requests")] {
        if let Some(m) = c["resources"][key].as_object().filter(|m| !m.is_empty()) {
            let _ = writeln!(s, "    {label}:");
            for (k, v) in m {
                let _ = writeln!(s, "      {k}:\t{}", v.as_str().unwrap_or_default());
            }
        }
    }
    match c["env"].as_array().filter(|a| !a.is_empty()) {
        None => s.push_str("    Environment:\t<none>\n"),
        Some(env) => {
            s.push_str("    Environment:\n");
            for e in env {
                let value = e["value"].as_str().map(String::from).unwrap_or_else(|| {
                    if e["valueFrom"].is_null() {
                        String::new()
                    } else {
                        "<set from a reference>".into()
                    }
                });
                let _ = writeln!(s, "      {}:\t{value}", str_or(&e["name"], ""));
            }
        }
    }
    match c["volumeMounts"].as_array().filter(|a| !a.is_empty()) {
        None => s.push_str("    Mounts:\t<none>\n"),
        Some(mounts) => {
            s.push_str("    Mounts:\n");
            for m in mounts {
                let ro = if m["readOnly"] == true { "ro" } else { "rw" };
                let _ = writeln!(
                    s,
                    "      {} from {} ({ro})",
                    str_or(&m["mountPath"], ""),
                    str_or(&m["name"], "")
                );
            }
        }
    }
}

fn state(s: &mut String, label: &str, st: &Value) {
    if let Some(r) = st.get("running").filter(|v| v.is_object()) {
        let _ = writeln!(s, "    {label}:\tRunning");
        if let Some(t) = r["startedAt"].as_str() {
            let _ = writeln!(s, "      Started:\t{}", describe_time(t));
        }
    } else if let Some(w) = st.get("waiting").filter(|v| v.is_object()) {
        let _ = writeln!(s, "    {label}:\tWaiting");
        if let Some(r) = w["reason"].as_str() {
            let _ = writeln!(s, "      Reason:\t{r}");
        }
        if let Some(m) = w["message"].as_str() {
            let _ = writeln!(s, "      Message:\t{m}");
        }
    } else if let Some(t) = st.get("terminated").filter(|v| v.is_object()) {
        let _ = writeln!(s, "    {label}:\tTerminated");
        if let Some(r) = t["reason"].as_str() {
            let _ = writeln!(s, "      Reason:\t{r}");
        }
        if let Some(m) = t["message"].as_str() {
            let _ = writeln!(s, "      Message:\t{m}");
        }
        let _ = writeln!(
            s,
            "      Exit Code:\t{}",
            t["exitCode"].as_i64().unwrap_or(0)
        );
        if let Some(x) = t["startedAt"].as_str() {
            let _ = writeln!(s, "      Started:\t{}", describe_time(x));
        }
        if let Some(x) = t["finishedAt"].as_str() {
            let _ = writeln!(s, "      Finished:\t{}", describe_time(x));
        }
    } else {
        let _ = writeln!(s, "    {label}:\tWaiting");
    }
}

async fn node(ctx: &Ctx, n: &Value) -> String {
    let m = &n["metadata"];
    let status = &n["status"];
    let name = str_or(&m["name"], "");
    let mut s = String::new();
    let _ = writeln!(s, "Name:\t{name}");
    let mut roles: Vec<String> = m["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/").map(String::from))
        .collect();
    roles.sort();
    let _ = writeln!(
        s,
        "Roles:\t{}",
        if roles.is_empty() {
            "<none>".into()
        } else {
            roles.join(",")
        }
    );
    map_lines(&mut s, "Labels", &m["labels"], &[]);
    map_lines(&mut s, "Annotations", &m["annotations"], &[]);
    if let Some(t) = m["creationTimestamp"].as_str() {
        let _ = writeln!(s, "CreationTimestamp:\t{}", describe_time(t));
    }
    let taints: Vec<String> = n["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let v = t["value"]
                .as_str()
                .map(|v| format!("={v}"))
                .unwrap_or_default();
            format!("{}{v}:{}", str_or(&t["key"], ""), str_or(&t["effect"], ""))
        })
        .collect();
    let _ = writeln!(
        s,
        "Taints:\t{}",
        if taints.is_empty() {
            "<none>".into()
        } else {
            taints.join("\n\t")
        }
    );
    let _ = writeln!(s, "Unschedulable:\t{}", n["spec"]["unschedulable"] == true);
    if let Ok(lease) = ctx
        .get(&format!(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        ))
        .await
    {
        s.push_str("Lease:\n");
        let _ = writeln!(
            s,
            "  HolderIdentity:\t{}",
            str_or(&lease["spec"]["holderIdentity"], "<unset>")
        );
        let _ = writeln!(
            s,
            "  AcquireTime:\t{}",
            lease["spec"]["acquireTime"]
                .as_str()
                .map(describe_time)
                .unwrap_or("<unset>".into())
        );
        let _ = writeln!(
            s,
            "  RenewTime:\t{}",
            lease["spec"]["renewTime"]
                .as_str()
                .map(describe_time)
                .unwrap_or("<unset>".into())
        );
    }
    s.push_str("Conditions:\n  Type\tStatus\tLastHeartbeatTime\tLastTransitionTime\tReason\tMessage\n  ----\t------\t-----------------\t------------------\t------\t-------\n");
    for c in status["conditions"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  {}\t{}\t{}\t{}\t{}\t{}",
            str_or(&c["type"], ""),
            str_or(&c["status"], ""),
            c["lastHeartbeatTime"]
                .as_str()
                .map(describe_time)
                .unwrap_or_default(),
            c["lastTransitionTime"]
                .as_str()
                .map(describe_time)
                .unwrap_or_default(),
            str_or(&c["reason"], ""),
            str_or(&c["message"], "")
        );
    }
    s.push_str("Addresses:\n");
    for a in status["addresses"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  {}:\t{}",
            str_or(&a["type"], ""),
            str_or(&a["address"], "")
        );
    }
    for (label, key) in [("Capacity", "capacity"), ("Allocatable", "allocatable")] {
        let _ = writeln!(s, "{label}:");
        for (k, v) in status[key].as_object().into_iter().flatten() {
            let _ = writeln!(s, "  {k}:\t{}", v.as_str().unwrap_or_default());
        }
    }
    let info = &status["nodeInfo"];
    s.push_str("System Info:\n");
    for (label, key) in [
        ("Machine ID", "machineID"),
        ("System UUID", "systemUUID"),
        ("Boot ID", "bootID"),
        ("Kernel Version", "kernelVersion"),
        ("OS Image", "osImage"),
        ("Operating System", "operatingSystem"),
        ("Architecture", "architecture"),
        ("Container Runtime Version", "containerRuntimeVersion"),
        ("Kubelet Version", "kubeletVersion"),
    ] {
        let _ = writeln!(s, "  {label}:\t{}", str_or(&info[key], ""));
    }
    if let Some(cidr) = n["spec"]["podCIDR"].as_str() {
        let _ = writeln!(s, "PodCIDR:\t{cidr}");
    }
    let selector = encode(&format!(
        "spec.nodeName={name},status.phase!=Succeeded,status.phase!=Failed"
    ));
    if let Ok(pods) = ctx
        .get(&format!("/api/v1/pods?fieldSelector={selector}"))
        .await
    {
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let _ = writeln!(s, "Non-terminated Pods:\t({} in total)", items.len());
        if !items.is_empty() {
            s.push_str("  Namespace\tName\tAge\n  ---------\t----\t---\n");
            for p in items {
                let _ = writeln!(
                    s,
                    "  {}\t{}\t{}",
                    str_or(&p["metadata"]["namespace"], ""),
                    str_or(&p["metadata"]["name"], ""),
                    age_of(p["metadata"]["creationTimestamp"].as_str())
                );
            }
        }
    }
    s
}

fn generic(obj: &Value) -> String {
    let m = &obj["metadata"];
    let mut s = String::new();
    let _ = writeln!(s, "Name:\t{}", str_or(&m["name"], ""));
    if let Some(ns) = m["namespace"].as_str() {
        let _ = writeln!(s, "Namespace:\t{ns}");
    }
    map_lines(&mut s, "Labels", &m["labels"], &[]);
    map_lines(
        &mut s,
        "Annotations",
        &m["annotations"],
        &["kubectl.kubernetes.io/last-applied-configuration"],
    );
    for key in ["spec", "status", "data"] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            let yaml = serde_saphyr::to_string(v).unwrap_or_default();
            let _ = writeln!(s, "{}:", capitalise(key));
            for line in yaml.lines() {
                let _ = writeln!(s, "  {line}");
            }
        }
    }
    s
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_description_has_kubectl_sections() {
        let p = json!({"metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "web", "image": "miniorch/demo", "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "hostIP": "192.0.2.2", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}],
                "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2026-11-22T04:15:49Z"}}}],
                "conditions": [{"type": "Ready", "status": "True"}], "qosClass": "BestEffort"}});
        let text = pod(&p);
        for want in [
            "Name:\tweb\n",
            "Node:\tn1/192.0.2.2\n",
            "Labels:\tapp=web\n",
            "Status:\tRunning\n",
            "  web:\n",
            "    Port:\t8080/TCP\n",
            "    State:\tRunning\n",
            "      Started:\tSun, 22 Nov 2026 04:15:49 +0000\n",
            "    Ready:\tTrue\n",
            "  Ready \tTrue \n",
            "QoS Class:\tBestEffort\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert_eq!(events_text(&[]), "Events:\t<none>\n");
    }
}

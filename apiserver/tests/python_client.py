"""The official Python client (PyPI `kubernetes`) against a miniorch apiserver: lists, watches,
creates, patches and deletes pods, services and deployments. Run by tests/python.rs with the
apiserver's URL; exits non-zero (with the reason) on any mismatch."""

import sys
import threading

from kubernetes import client, watch

cfg = client.Configuration()
cfg.host = sys.argv[1]
api = client.ApiClient(cfg)
core = client.CoreV1Api(api)
apps = client.AppsV1Api(api)
NS = "default"


def watch_names(list_fn, rv, want):
    """Collects (type, name) events from a watch started at rv until `want` are seen."""
    seen = []

    def run():
        w = watch.Watch()
        for e in w.stream(list_fn, NS, resource_version=rv, timeout_seconds=20):
            seen.append((e["type"], e["object"].metadata.name))
            if len(seen) >= want:
                w.stop()

    t = threading.Thread(target=run)
    t.start()
    return t, seen


def container():
    return client.V1Container(name="c", image="miniorch/demo", ports=[client.V1ContainerPort(container_port=8080)])


# Pods
rv = core.list_namespaced_pod(NS).metadata.resource_version
t, seen = watch_names(core.list_namespaced_pod, rv, 3)
pod = client.V1Pod(
    metadata=client.V1ObjectMeta(name="py-pod", labels={"app": "py"}),
    spec=client.V1PodSpec(containers=[container()]),
)
created = core.create_namespaced_pod(NS, pod)
assert created.spec.restart_policy == "Always", created.spec
core.patch_namespaced_pod("py-pod", NS, {"metadata": {"labels": {"x": "y"}}})
assert core.read_namespaced_pod("py-pod", NS).metadata.labels == {"app": "py", "x": "y"}
assert [p.metadata.name for p in core.list_namespaced_pod(NS, label_selector="x=y").items] == ["py-pod"]
core.delete_namespaced_pod("py-pod", NS)
t.join(30)
assert seen == [("ADDED", "py-pod"), ("MODIFIED", "py-pod"), ("DELETED", "py-pod")], seen

# Services
svc = client.V1Service(
    metadata=client.V1ObjectMeta(name="py-svc"),
    spec=client.V1ServiceSpec(selector={"app": "py"}, ports=[client.V1ServicePort(port=80, target_port=8080)]),
)
s = core.create_namespaced_service(NS, svc)
assert s.spec.cluster_ip.startswith("10."), s.spec
core.patch_namespaced_service("py-svc", NS, {"metadata": {"labels": {"a": "b"}}})
assert core.read_namespaced_service("py-svc", NS).metadata.labels == {"a": "b"}
assert "py-svc" in [x.metadata.name for x in core.list_namespaced_service(NS).items]
core.delete_namespaced_service("py-svc", NS)
try:
    core.read_namespaced_service("py-svc", NS)
    raise AssertionError("service still there")
except client.exceptions.ApiException as e:
    assert e.status == 404, e

# Deployments
rv = apps.list_namespaced_deployment(NS).metadata.resource_version
t, seen = watch_names(apps.list_namespaced_deployment, rv, 3)
dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="py-dep"),
    spec=client.V1DeploymentSpec(
        replicas=2,
        selector=client.V1LabelSelector(match_labels={"app": "py"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "py"}),
            spec=client.V1PodSpec(containers=[container()]),
        ),
    ),
)
d = apps.create_namespaced_deployment(NS, dep)
assert d.spec.strategy.type == "RollingUpdate", d.spec.strategy
apps.patch_namespaced_deployment_scale("py-dep", NS, {"spec": {"replicas": 3}})
assert apps.read_namespaced_deployment("py-dep", NS).spec.replicas == 3
apps.delete_namespaced_deployment("py-dep", NS)
t.join(30)
assert seen == [("ADDED", "py-dep"), ("MODIFIED", "py-dep"), ("DELETED", "py-dep")], seen

# Errors come back as ApiException with upstream's codes.
try:
    core.create_namespaced_pod(NS, client.V1Pod(metadata=client.V1ObjectMeta(name="Bad_Name"), spec=client.V1PodSpec(containers=[container()])))
    raise AssertionError("invalid pod accepted")
except client.exceptions.ApiException as e:
    assert e.status == 422 and "metadata.name" in e.body, (e.status, e.body)

print("python client ok")

"""The official Python `kubernetes` client against a Skiff API server (KUBECONFIG in the
environment): CRUD, patch, list with selectors, watch, status and scale subresources, errors.
Exits non-zero with the failing check on the first problem."""
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config()
core = client.CoreV1Api()
apps = client.AppsV1Api()
batch = client.BatchV1Api()
ns = "sk-py"


def check(cond, what):
    if not cond:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)


core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
cm = core.create_namespaced_config_map(ns, client.V1ConfigMap(
    metadata=client.V1ObjectMeta(name="sk-cm", labels={"app": "py"}), data={"a": "1"}))
check(cm.metadata.resource_version, "create returns a resourceVersion")
got = core.read_namespaced_config_map("sk-cm", ns)
check(got.data == {"a": "1"}, "read back data")
got.data["b"] = "2"
upd = core.replace_namespaced_config_map("sk-cm", ns, got)
check(int(upd.metadata.resource_version) > int(cm.metadata.resource_version), "replace bumps rv")
core.patch_namespaced_config_map("sk-cm", ns, {"data": {"c": "3"}})
check(core.read_namespaced_config_map("sk-cm", ns).data == {"a": "1", "b": "2", "c": "3"}, "patch")
lst = core.list_namespaced_config_map(ns, label_selector="app=py")
check([i.metadata.name for i in lst.items] == ["sk-cm"], "label selector list")
try:
    core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="sk-cm")))
    check(False, "duplicate create fails")
except ApiException as e:
    check(e.status == 409, f"409 on duplicate, got {e.status}")
try:
    core.read_namespaced_config_map("nope", ns)
    check(False, "missing object")
except ApiException as e:
    check(e.status == 404, "404 on missing")

dep = apps.create_namespaced_deployment(ns, client.V1Deployment(
    metadata=client.V1ObjectMeta(name="sk-dep"),
    spec=client.V1DeploymentSpec(
        replicas=1,
        selector=client.V1LabelSelector(match_labels={"app": "sk-dep"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "sk-dep"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")])))))
check(dep.spec.strategy.type == "RollingUpdate", "deployment defaults")
apps.patch_namespaced_deployment_scale("sk-dep", ns, {"spec": {"replicas": 3}})
check(apps.read_namespaced_deployment_scale("sk-dep", ns).spec.replicas == 3, "scale subresource")
# The Deployment controller writes status too: read-modify-write with retries on 409, as
# clients do, and check what the replace stored.
for attempt in range(10):
    st = apps.read_namespaced_deployment_status("sk-dep", ns)
    st.status = client.V1DeploymentStatus(replicas=3, ready_replicas=2)
    try:
        stored = apps.replace_namespaced_deployment_status("sk-dep", ns, st)
        break
    except client.exceptions.ApiException as e:
        if e.status != 409 or attempt == 9:
            raise
check(stored.status.ready_replicas == 2, "status subresource")

job = batch.create_namespaced_job(ns, client.V1Job(
    metadata=client.V1ObjectMeta(name="sk-job"),
    spec=client.V1JobSpec(template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
        restart_policy="Never", containers=[client.V1Container(name="c", image="busybox")])))))
check(job.spec.backoff_limit == 6, "job defaults")

# Watch: events after the list's resourceVersion arrive in order.
rv = core.list_namespaced_config_map(ns).metadata.resource_version
seen = []


def watcher():
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=5):
        seen.append((ev["type"], ev["object"].metadata.name))
        if len(seen) >= 3:
            w.stop()


t = threading.Thread(target=watcher)
t.start()
time.sleep(0.5)
core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="sk-w")))
core.patch_namespaced_config_map("sk-w", ns, {"metadata": {"labels": {"x": "y"}}})
core.delete_namespaced_config_map("sk-w", ns)
t.join(10)
check(seen == [("ADDED", "sk-w"), ("MODIFIED", "sk-w"), ("DELETED", "sk-w")], f"watch events {seen}")

core.delete_namespace(ns)
for _ in range(100):
    try:
        core.read_namespace(ns)
        time.sleep(0.1)
    except ApiException as e:
        check(e.status == 404, "namespace gone")
        break
else:
    check(False, "namespace deleted within 10 s")
print("ok")

"""The official Kubernetes Python client against keel-control.

Run by tests/python_client.rs: `python client_test.py KUBECONFIG`. Exits non-zero with the
failing check's message. CRUD, patch and watch on pods, deployments, services, nodes and events.
"""
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def expect_status(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ApiException as e:
        check(e.status == code, f"expected HTTP {code}, got {e.status}: {e.body}")
        return e
    raise AssertionError(f"expected HTTP {code}, call succeeded")


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    v1 = client.CoreV1Api()
    apps = client.AppsV1Api()
    version = client.VersionApi().get_code()
    check(version.major == "1", f"version {version}")

    # Pods: create, read, list with selectors, patch, watch, delete.
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="py-pod", labels={"app": "py"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="keel.local/busybox:latest")]),
    )
    created = v1.create_namespaced_pod("default", pod)
    check(created.metadata.uid, "uid set")
    check(created.spec.restart_policy == "Always", "defaulted restartPolicy")
    got = v1.read_namespaced_pod("py-pod", "default")
    # (The scheduler may already have written PodScheduled=False: there are no nodes.)
    check(got.metadata.uid == created.metadata.uid, "the same pod reads back")
    lst = v1.list_namespaced_pod("default", label_selector="app=py")
    check([p.metadata.name for p in lst.items] == ["py-pod"], f"label selector: {lst.items}")
    lst = v1.list_namespaced_pod("default", field_selector="metadata.name=py-pod")
    check(len(lst.items) == 1, "field selector")
    patched = v1.patch_namespaced_pod("py-pod", "default", {"metadata": {"labels": {"patched": "yes"}}})
    check(patched.metadata.labels.get("patched") == "yes", "strategic merge patch on labels")
    expect_status(409, v1.create_namespaced_pod, "default", pod)
    expect_status(404, v1.read_namespaced_pod, "missing", "default")
    bad = client.V1Pod(metadata=client.V1ObjectMeta(name="Bad_Name"), spec=pod.spec)
    e = expect_status(422, v1.create_namespaced_pod, "default", bad)
    check("metadata.name" in e.body, f"422 names the field: {e.body}")

    # Watch: start from the list's resourceVersion, then create and delete a pod.
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    events = []

    def watcher():
        w = watch.Watch()
        for ev in w.stream(v1.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=10):
            events.append((ev["type"], ev["object"].metadata.name))
            if ev["type"] == "DELETED" and ev["object"].metadata.name == "py-watched":
                w.stop()

    t = threading.Thread(target=watcher)
    t.start()
    time.sleep(0.5)
    v1.create_namespaced_pod("default", client.V1Pod(
        metadata=client.V1ObjectMeta(name="py-watched"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="keel.local/busybox:latest")]),
    ))
    v1.delete_namespaced_pod("py-watched", "default", grace_period_seconds=0)
    t.join(timeout=15)
    check(("ADDED", "py-watched") in events and ("DELETED", "py-watched") in events, f"watch events: {events}")

    # Deployments: create, scale via patch and the scale subresource, read status, delete.
    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="py-deploy"),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels={"app": "pyd"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "pyd"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="keel.local/echo:latest")]),
            ),
        ),
    )
    d = apps.create_namespaced_deployment("default", dep)
    check(d.spec.strategy.type == "RollingUpdate", "defaulted strategy")
    apps.patch_namespaced_deployment("py-deploy", "default", {"spec": {"replicas": 3}})
    scale = apps.read_namespaced_deployment_scale("py-deploy", "default")
    check(scale.spec.replicas == 3, f"scale subresource: {scale}")
    apps.patch_namespaced_deployment_scale("py-deploy", "default", {"spec": {"replicas": 4}})
    check(apps.read_namespaced_deployment("py-deploy", "default").spec.replicas == 4, "scaled via subresource")
    image_patch = {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "keel.local/echo:v2"}]}}}}
    d = apps.patch_namespaced_deployment("py-deploy", "default", image_patch)
    check(d.spec.template.spec.containers[0].image == "keel.local/echo:v2", "containers merged by name")
    check(len(d.spec.template.spec.containers) == 1, "strategic merge keeps one container")
    apps.read_namespaced_deployment_status("py-deploy", "default")
    apps.delete_namespaced_deployment("py-deploy", "default")
    expect_status(404, apps.read_namespaced_deployment, "py-deploy", "default")

    # Services: ClusterIP allocated, NodePort allocated, update with a stale version conflicts.
    svc = v1.create_namespaced_service("default", client.V1Service(
        metadata=client.V1ObjectMeta(name="py-svc"),
        spec=client.V1ServiceSpec(type="NodePort", selector={"app": "py"},
                                  ports=[client.V1ServicePort(port=80, target_port=8080)]),
    ))
    check(svc.spec.cluster_ip and svc.spec.cluster_ip.startswith("10."), f"clusterIP {svc.spec.cluster_ip}")
    check(30000 <= svc.spec.ports[0].node_port <= 32767, "nodePort allocated")
    svc.metadata.labels = {"v": "1"}
    v1.replace_namespaced_service("py-svc", "default", svc)
    svc.metadata.labels = {"v": "2"}
    expect_status(409, v1.replace_namespaced_service, "py-svc", "default", svc)
    v1.delete_namespaced_service("py-svc", "default")

    # Nodes: create, status update, list, delete.
    node = v1.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="py-node", labels={"zone": "a"})))
    # The node IPAM controller writes spec.podCIDR meanwhile: re-read and retry on 409, as
    # clients of Kubernetes do.
    for attempt in range(20):
        node = v1.read_node("py-node")
        node.status = client.V1NodeStatus(conditions=[client.V1NodeCondition(type="Ready", status="True")])
        try:
            v1.replace_node_status("py-node", node)
            break
        except ApiException as e:
            check(e.status == 409 and attempt < 19, f"node status update: {e.status} {e.body}")
            time.sleep(0.1)
    n = v1.read_node("py-node")
    check(n.status.conditions[0].type == "Ready", "node status written")
    check([x.metadata.name for x in v1.list_node(label_selector="zone=a").items] == ["py-node"], "node selector")
    v1.delete_node("py-node")

    # Events: create, list by involvedObject, watch, delete.
    ev = v1.create_namespaced_event("default", client.CoreV1Event(
        metadata=client.V1ObjectMeta(name="py-pod.1"),
        involved_object=client.V1ObjectReference(kind="Pod", name="py-pod", namespace="default"),
        reason="Tested", message="from the python client", type="Normal",
    ))
    # (The scheduler also records FailedScheduling events on py-pod: there are no nodes.)
    lst = v1.list_namespaced_event("default", field_selector="involvedObject.name=py-pod,reason=Tested")
    check([e.reason for e in lst.items] == ["Tested"], f"events by involvedObject: {lst.items}")
    w = watch.Watch()
    seen = [e["object"].reason for e in w.stream(v1.list_namespaced_event, "default", timeout_seconds=2)]
    check("Tested" in seen, f"event watch initial list: {seen}")
    v1.delete_namespaced_event(ev.metadata.name, "default")
    v1.delete_namespaced_pod("py-pod", "default", grace_period_seconds=0)
    print("python client: all checks passed")


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)

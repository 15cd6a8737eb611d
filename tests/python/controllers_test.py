"""The controllers through the official Kubernetes Python client.

Run by tests/python_controllers.rs: `python controllers_test.py KUBECONFIG` against a
keel-control whose pods are made Running/Ready by hollow nodes that finish pod deletions after
a 2 s delay. Checks: a Deployment becomes available; a deleted pod is replaced; scaling through
the scale subresource; ReplicaSet status and ownership; events; foreground deletion waits for
its dependents; background deletion removes them after.
"""
import sys
import time

from kubernetes import client, config
from kubernetes.client.rest import ApiException


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def wait(what, fn, timeout=60):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last})")


def live_pods(v1, selector):
    pods = v1.list_namespaced_pod("default", label_selector=selector).items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def ready(pod):
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def available(apps, name):
    status = apps.read_namespaced_deployment(name, "default").status
    return (status.available_replicas or 0) if status else 0


def deployment(name, replicas):
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels={"app": name}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": name}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="keel.local/echo:latest")]),
            ),
        ),
    )


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    v1 = client.CoreV1Api()
    apps = client.AppsV1Api()

    apps.create_namespaced_deployment("default", deployment("py-web", 3))
    wait("3 available replicas", lambda: available(apps, "py-web") == 3)
    d = apps.read_namespaced_deployment("py-web", "default")
    check(d.status.observed_generation >= d.metadata.generation, f"observedGeneration {d.status}")
    conditions = {c.type: c for c in d.status.conditions}
    check(conditions["Available"].status == "True", f"Available: {conditions}")
    check(conditions["Progressing"].reason == "NewReplicaSetAvailable", f"Progressing: {conditions['Progressing']}")

    # The ReplicaSet: owned by the Deployment, status filled.
    rss = apps.list_namespaced_replica_set("default", label_selector="app=py-web").items
    check(len(rss) == 1, f"one ReplicaSet, got {[r.metadata.name for r in rss]}")
    rs = rss[0]
    owner = rs.metadata.owner_references[0]
    check(owner.kind == "Deployment" and owner.name == "py-web" and owner.controller, f"owner {owner}")
    check(rs.status.ready_replicas == 3 and rs.status.available_replicas == 3, f"rs status {rs.status}")
    check(rs.metadata.annotations.get("deployment.kubernetes.io/revision") == "1", f"annotations {rs.metadata.annotations}")
    pods = live_pods(v1, "app=py-web")
    check(all(p.metadata.name.startswith(rs.metadata.name + "-") for p in pods), "pods are named after the ReplicaSet")
    check(all(p.metadata.owner_references[0].uid == rs.metadata.uid for p in pods), "pods are owned by the ReplicaSet")

    # A deleted pod is replaced.
    victim = pods[0].metadata.name
    v1.delete_namespaced_pod(victim, "default")
    wait("a replacement pod", lambda: (lambda ps: len(ps) == 3 and victim not in [p.metadata.name for p in ps] and all(ready(p) for p in ps))(live_pods(v1, "app=py-web")))

    # Scale through the scale subresource.
    scale = apps.read_namespaced_deployment_scale("py-web", "default")
    check(scale.spec.replicas == 3, f"scale {scale}")
    apps.patch_namespaced_deployment_scale("py-web", "default", {"spec": {"replicas": 5}})
    wait("5 available replicas", lambda: available(apps, "py-web") == 5)
    apps.patch_namespaced_deployment("py-web", "default", {"spec": {"replicas": 2}})
    wait("2 live pods", lambda: len(live_pods(v1, "app=py-web")) == 2)

    # Events of the controllers.
    events = v1.list_namespaced_event("default", field_selector=f"involvedObject.name={rs.metadata.name}").items
    reasons = {e.reason for e in events}
    check("SuccessfulCreate" in reasons and "SuccessfulDelete" in reasons, f"ReplicaSet events: {reasons}")

    # Foreground deletion: the Deployment stays (with the finalizer) until its pods are gone.
    apps.delete_namespaced_deployment("py-web", "default", body=client.V1DeleteOptions(propagation_policy="Foreground"))
    d = apps.read_namespaced_deployment("py-web", "default")
    check(d.metadata.deletion_timestamp is not None, "the deployment is marked for deletion")
    check("foregroundDeletion" in (d.metadata.finalizers or []), f"finalizers {d.metadata.finalizers}")
    saw_terminating_pods = False
    deadline = time.time() + 60
    while True:
        try:
            apps.read_namespaced_deployment("py-web", "default")
        except ApiException as e:
            check(e.status == 404, f"unexpected {e.status}")
            break
        pods = v1.list_namespaced_pod("default", label_selector="app=py-web").items
        if pods:
            saw_terminating_pods = True
        check(time.time() < deadline, "foreground deletion did not finish in 60 s")
        time.sleep(0.1)
    check(saw_terminating_pods, "the deployment outlived its pods (foreground deletion waits for them)")
    check(not v1.list_namespaced_pod("default", label_selector="app=py-web").items, "no pods are left after the foreground deletion")
    check(not apps.list_namespaced_replica_set("default", label_selector="app=py-web").items, "no ReplicaSet is left")

    # Background deletion: the Deployment goes at once, its ReplicaSet and pods after.
    apps.create_namespaced_deployment("default", deployment("py-bg", 2))
    wait("2 available", lambda: available(apps, "py-bg") == 2)
    apps.delete_namespaced_deployment("py-bg", "default", body=client.V1DeleteOptions(propagation_policy="Background"))
    try:
        apps.read_namespaced_deployment("py-bg", "default")
        raise AssertionError("a background deletion removes the owner at once")
    except ApiException as e:
        check(e.status == 404, f"unexpected {e.status}")
    wait("the ReplicaSet and pods collected", lambda: not apps.list_namespaced_replica_set("default", label_selector="app=py-bg").items
         and not v1.list_namespaced_pod("default", label_selector="app=py-bg").items)
    print("controllers via the python client: ok")


if __name__ == "__main__":
    main(sys.argv[1])

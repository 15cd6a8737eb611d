//! The API server on etcd, as a client sees it: a real keel-control (HTTPS, admin token, free
//! port) over a private etcd (`/usr/bin/etcd`, started per test on free ports with a key prefix
//! of its own, killed when the test ends): CRUD with 409s, watch resume, 410 after the periodic
//! compaction, consistent list paging, and ClusterIP allocation. The full API suite runs on
//! the embedded store (apiserver.rs); these are the checks where the backend's revisions,
//! conditional writes, watches, compaction and range reads show. None of them needs root.

use keel_tests::api_client::{Backend, Cluster, assert_status, configmap, rv};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn start() -> Cluster {
    Cluster::start(Backend::Etcd)
        .await
        .expect("keel-control starts on etcd")
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("a list has items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_with_conflicts_and_not_found() {
    let cluster = start().await;
    let base = "/api/v1/namespaces/default/configmaps";
    let created = cluster.post(base, configmap("settings", json!({}))).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_status(
        &cluster.post(base, configmap("settings", json!({}))).await,
        409,
        "AlreadyExists",
    );
    let fetched = cluster.get(&format!("{base}/settings")).await;
    assert_eq!(
        (fetched.body["data"]["k"].as_str(), rv(&fetched.body)),
        (Some("v"), rv(&created.body))
    );
    let mut update = fetched.body.clone();
    update["data"]["k"] = json!("v2");
    let updated = cluster
        .put(&format!("{base}/settings"), update.clone())
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert!(rv(&updated.body).parse::<i64>().unwrap() > rv(&created.body).parse::<i64>().unwrap());
    // The same resourceVersion again is stale now.
    assert_status(
        &cluster.put(&format!("{base}/settings"), update).await,
        409,
        "Conflict",
    );
    let patched = cluster
        .patch(
            &format!("{base}/settings"),
            "application/merge-patch+json",
            json!({"data": {"extra": "1"}}),
        )
        .await;
    assert_eq!(
        (
            patched.body["data"]["k"].as_str(),
            patched.body["data"]["extra"].as_str()
        ),
        (Some("v2"), Some("1"))
    );
    let deleted = cluster.delete(&format!("{base}/settings")).await;
    assert_eq!(deleted.body["status"], "Success", "{}", deleted.body);
    assert_status(
        &cluster.get(&format!("{base}/settings")).await,
        404,
        "NotFound",
    );
    assert_status(
        &cluster.delete(&format!("{base}/settings")).await,
        404,
        "NotFound",
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_start_with_the_state_and_resume_in_order() {
    let cluster = start().await;
    let base = "/api/v1/namespaces/default/configmaps";
    let created_rv = rv(&cluster.post(base, configmap("w", json!({}))).await.body);
    let initial = cluster
        .watch(&format!("{base}?watch=true&timeoutSeconds=5"), 1)
        .await;
    assert_eq!(
        (
            initial[0]["type"].as_str(),
            initial[0]["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("w"))
    );
    cluster
        .patch(
            &format!("{base}/w"),
            "application/merge-patch+json",
            json!({"data": {"k": "2"}}),
        )
        .await;
    cluster.post(base, configmap("x", json!({}))).await;
    cluster.delete(&format!("{base}/w")).await;
    let resumed = cluster
        .watch(
            &format!("{base}?watch=true&resourceVersion={created_rv}&timeoutSeconds=5"),
            3,
        )
        .await;
    let seen: Vec<(&str, &str)> = resumed
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["object"]["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [("MODIFIED", "w"), ("ADDED", "x"), ("DELETED", "w")]);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_compaction_expires_old_versions_but_keeps_the_latest() {
    keel_tests::api_client::check_periodic_compaction(Backend::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_are_one_consistent_snapshot() {
    let cluster = start().await;
    let base = "/api/v1/namespaces/default/configmaps";
    for name in ["a", "b", "c", "d", "e"] {
        let created = cluster.post(base, configmap(name, json!({}))).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    }
    let first = cluster.get(&format!("{base}?limit=2")).await;
    assert_eq!(names(&first.body), ["a", "b"]);
    let snapshot = rv(&first.body);
    // Written after the first page: not part of this list.
    cluster.post(base, configmap("bb", json!({}))).await;
    cluster.delete(&format!("{base}/d")).await;
    let mut all = names(&first.body);
    let mut token = first.body["metadata"]["continue"]
        .as_str()
        .map(str::to_string);
    while let Some(t) = token {
        let page = cluster.get(&format!("{base}?limit=2&continue={t}")).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_eq!(
            rv(&page.body),
            snapshot,
            "every page is read at the first's version"
        );
        all.extend(names(&page.body));
        token = page.body["metadata"]["continue"]
            .as_str()
            .map(str::to_string);
    }
    assert_eq!(all, ["a", "b", "c", "d", "e"]);
    assert_eq!(
        names(&cluster.get(base).await.body),
        ["a", "b", "bb", "c", "e"]
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_distinct_cluster_ips_that_are_freed_on_delete() {
    let cluster = start().await;
    let base = "/api/v1/namespaces/default/services";
    let svc = |name: &str, spec: Value| json!({"metadata": {"name": name}, "spec": spec});
    let mut ips = Vec::new();
    for name in ["a", "b", "c"] {
        let created = cluster
            .post(base, svc(name, json!({"ports": [{"port": 80}]})))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        let ip: std::net::Ipv4Addr = created.body["spec"]["clusterIP"]
            .as_str()
            .expect("a ClusterIP")
            .parse()
            .expect("an IPv4 address");
        assert!(
            ip.octets()[0] == 10 && (96..112).contains(&ip.octets()[1]),
            "{ip} in 10.96.0.0/12"
        );
        ips.push(ip);
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "distinct addresses: {ips:?}");
    let a_ip = cluster.get(&format!("{base}/a")).await.body["spec"]["clusterIP"].clone();
    assert_status(
        &cluster
            .post(
                base,
                svc("d", json!({"clusterIP": a_ip, "ports": [{"port": 80}]})),
            )
            .await,
        422,
        "Invalid",
    );
    assert_eq!(
        cluster.delete(&format!("{base}/a")).await.body["kind"],
        "Service"
    );
    let reused = cluster
        .post(
            base,
            svc("d", json!({"clusterIP": a_ip, "ports": [{"port": 80}]})),
        )
        .await;
    assert_eq!(reused.status, StatusCode::CREATED, "{}", reused.body);
    cluster.stop().await;
}

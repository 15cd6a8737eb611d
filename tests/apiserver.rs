//! The API server as a client sees it: a real keel-control (HTTPS with its generated CA, the
//! admin token, the embedded store in a temp dir, a free port) driven over HTTPS: CRUD and
//! its errors (401, 404, 409, 422 causes, 400 strict decoding, 413, 415), watches (resume,
//! 410 after compaction, selectors), selectors and paging, Tables, discovery, subresources,
//! namespaces, finalizers and graceful pod deletion.
use std::time::Duration;

use keel_tests::api_client::{Backend, Cluster, Reply, TABLE, assert_status, configmap, rv};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// keel-control on the embedded store in a temporary directory.
async fn start() -> Cluster {
    Cluster::start(Backend::Embedded)
        .await
        .expect("keel-control starts")
}

#[tokio::test]
async fn requests_without_the_token_are_unauthorized_but_health_and_version_are_public() {
    let cluster = start().await;
    let anonymous = cluster
        .client
        .get(cluster.url("/api/v1/namespaces"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(
        (
            body["kind"].as_str(),
            body["reason"].as_str(),
            body["code"].as_u64()
        ),
        (Some("Status"), Some("Unauthorized"), Some(401))
    );
    let wrong = cluster
        .client
        .get(cluster.url("/api/v1/namespaces"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    for path in ["/healthz", "/livez", "/readyz"] {
        let reply = cluster.client.get(cluster.url(path)).send().await.unwrap();
        assert_eq!(reply.status(), StatusCode::OK, "{path}");
    }
    let version: Value = cluster
        .client
        .get(cluster.url("/version/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (version["major"].as_str(), version["minor"].as_str()),
        (Some("1"), Some("32"))
    );
    let metrics = cluster.get("/metrics").await;
    assert!(
        metrics
            .body
            .as_str()
            .unwrap()
            .contains("apiserver_request_total"),
        "{}",
        metrics.body
    );
    let kubeconfig = std::fs::read_to_string(&cluster.running().kubeconfig).unwrap();
    assert!(
        kubeconfig.contains(&cluster.running().url)
            && kubeconfig.contains("certificate-authority-data")
    );
    cluster.stop().await;
}

#[tokio::test]
async fn discovery_aggregated_and_legacy_and_openapi() {
    let cluster = start().await;
    let aggregated =
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    let apis = cluster
        .send(Method::GET, "/apis", None, Some(aggregated))
        .await;
    assert_eq!(
        apis.headers["content-type"],
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    let apps = apis.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metadata"]["name"] == "apps")
        .expect("apps group")
        .clone();
    let deployments = apps["versions"][0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "deployments")
        .unwrap()
        .clone();
    assert_eq!(deployments["categories"], json!(["all"]));
    assert_eq!(deployments["shortNames"], json!(["deploy"]));
    let core = cluster
        .send(Method::GET, "/api", None, Some(aggregated))
        .await;
    assert_eq!(core.body["kind"], "APIGroupDiscoveryList");
    let legacy = cluster.get("/api").await;
    assert_eq!(legacy.body["kind"], "APIVersions");
    let v1 = cluster.get("/api/v1").await;
    let names: Vec<&str> = v1.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for name in [
        "pods",
        "pods/status",
        "pods/binding",
        "services",
        "nodes",
        "namespaces",
        "events",
        "configmaps",
        "secrets",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let groups = cluster.get("/apis").await;
    assert_eq!(groups.body["kind"], "APIGroupList");
    let root = cluster.get("/openapi/v3").await;
    let url = root.body["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .expect("apps/v1 document")
        .to_string();
    let doc = cluster.get(&url).await;
    assert!(doc.body["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"].is_array());
    assert_status(&cluster.get("/apis/nope/v1/things").await, 404, "NotFound");
    cluster.stop().await;
}

#[tokio::test]
async fn crud_with_conflicts_and_not_found() {
    let cluster = start().await;
    let base = "/api/v1/namespaces/default/configmaps";
    let created = cluster
        .post(base, configmap("settings", json!({"app": "web"})))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let uid = created.body["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!uid.is_empty() && created.body["metadata"]["creationTimestamp"].is_string());
    assert_status(
        &cluster.post(base, configmap("settings", json!({}))).await,
        409,
        "AlreadyExists",
    );

    let fetched = cluster.get(&format!("{base}/settings")).await;
    assert_eq!(fetched.body["data"]["k"], "v");
    let first_rv = rv(&fetched.body);

    let mut update = fetched.body.clone();
    update["data"]["k"] = json!("v2");
    let updated = cluster
        .put(&format!("{base}/settings"), update.clone())
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_ne!(rv(&updated.body), first_rv);
    // The same resourceVersion again is stale now.
    let stale = cluster
        .put(&format!("{base}/settings"), update.clone())
        .await;
    assert_status(&stale, 409, "Conflict");
    // Without a resourceVersion an update is unconditional.
    update["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    update["data"]["k"] = json!("v3");
    assert_eq!(
        cluster
            .put(&format!("{base}/settings"), update)
            .await
            .status,
        StatusCode::OK
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
        (Some("v3"), Some("1"))
    );
    let json_patch = cluster
        .patch(
            &format!("{base}/settings"),
            "application/json-patch+json",
            json!([{"op": "remove", "path": "/data/extra"}]),
        )
        .await;
    assert!(
        json_patch.body["data"].get("extra").is_none(),
        "{}",
        json_patch.body
    );
    assert_eq!(json_patch.body["metadata"]["uid"], uid.as_str());
    let failed = cluster
        .patch(
            &format!("{base}/settings"),
            "application/json-patch+json",
            json!([{"op": "remove", "path": "/data/missing"}]),
        )
        .await;
    assert_eq!(failed.status.as_u16(), 422, "{}", failed.body);

    let deleted = cluster.delete(&format!("{base}/settings")).await;
    assert_eq!(
        (
            deleted.body["kind"].as_str(),
            deleted.body["status"].as_str()
        ),
        (Some("Status"), Some("Success")),
        "{}",
        deleted.body
    );
    let gone = cluster.get(&format!("{base}/settings")).await;
    assert_status(&gone, 404, "NotFound");
    assert_eq!(gone.body["message"], "configmaps \"settings\" not found");
    assert_status(
        &cluster.delete(&format!("{base}/settings")).await,
        404,
        "NotFound",
    );

    let generated = cluster
        .post(
            base,
            json!({"metadata": {"generateName": "gen-"}, "data": {}}),
        )
        .await;
    let name = generated.body["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    cluster.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_4xx_status_naming_the_problem() {
    let cluster = start().await;
    let pods = "/api/v1/namespaces/default/pods";
    let invalid = cluster.post(pods, json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": [{"name": "c", "image": ""}]}})).await;
    assert_status(&invalid, 422, "Invalid");
    let fields: Vec<&str> = invalid.body["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert!(fields.contains(&"metadata.name"), "{}", invalid.body);
    assert!(
        fields.contains(&"spec.containers[0].image"),
        "{}",
        invalid.body
    );
    assert_eq!(invalid.body["details"]["kind"], "Pod");

    let strict = cluster.post(&format!("{pods}?fieldValidation=Strict"), json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}], "foo": 1}})).await;
    assert_status(&strict, 400, "BadRequest");
    assert!(
        strict.body["message"]
            .as_str()
            .unwrap()
            .contains("strict decoding error: unknown field \"spec.foo\""),
        "{}",
        strict.body
    );
    let duplicate = cluster
        .send(Method::POST, &format!("{pods}?fieldValidation=Strict"), Some(("application/json", br#"{"metadata":{"name":"p","name":"q"},"spec":{"containers":[{"name":"c","image":"x"}]}}"#.to_vec())), None)
        .await;
    assert!(
        duplicate.body["message"]
            .as_str()
            .unwrap()
            .contains("duplicate field \"metadata.name\""),
        "{}",
        duplicate.body
    );
    let warned = cluster.post(&format!("{pods}?fieldValidation=Warn"), json!({"metadata": {"name": "warned"}, "spec": {"containers": [{"name": "c", "image": "x"}], "foo": 1}})).await;
    assert_eq!(warned.status, StatusCode::CREATED);
    assert!(
        warned.headers["warning"]
            .to_str()
            .unwrap()
            .contains("unknown field \\\"spec.foo\\\""),
        "{:?}",
        warned.headers
    );
    assert!(
        warned.body["spec"].get("foo").is_none(),
        "unknown fields are dropped"
    );

    let malformed = cluster
        .send(
            Method::POST,
            pods,
            Some(("application/json", b"{\"metadata\": ".to_vec())),
            None,
        )
        .await;
    assert_status(&malformed, 400, "BadRequest");
    let yaml = cluster
        .send(
            Method::POST,
            pods,
            Some((
                "application/yaml",
                b"metadata:\n  name: from-yaml\nspec:\n  containers:\n  - {name: c, image: x}\n"
                    .to_vec(),
            )),
            None,
        )
        .await;
    assert_eq!(yaml.status, StatusCode::CREATED, "{}", yaml.body);
    let bad_yaml = cluster
        .send(
            Method::POST,
            pods,
            Some(("application/yaml", b"metadata: [\n".to_vec())),
            None,
        )
        .await;
    assert_status(&bad_yaml, 400, "BadRequest");
    let wrong_kind = cluster
        .post(
            pods,
            json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "x"}}),
        )
        .await;
    assert_status(&wrong_kind, 400, "BadRequest");
    let wrong_type = cluster
        .post(
            "/apis/apps/v1/namespaces/default/deployments",
            json!({"metadata": {"name": "d"}, "spec": {"replicas": "three"}}),
        )
        .await;
    assert_status(&wrong_type, 400, "BadRequest");
    assert!(
        wrong_type.body["message"]
            .as_str()
            .unwrap()
            .contains("spec.replicas"),
        "{}",
        wrong_type.body
    );
    let huge = vec![b' '; 4 * 1024 * 1024];
    assert_status(
        &cluster
            .send(Method::POST, pods, Some(("application/json", huge)), None)
            .await,
        413,
        "RequestEntityTooLarge",
    );
    assert_status(
        &cluster
            .send(
                Method::POST,
                pods,
                Some(("text/plain", b"hello".to_vec())),
                None,
            )
            .await,
        415,
        "UnsupportedMediaType",
    );
    let not_a_patch = cluster
        .send(
            Method::PATCH,
            &format!("{pods}/warned"),
            Some(("application/merge-patch+json", b"[1,".to_vec())),
            None,
        )
        .await;
    assert_status(&not_a_patch, 400, "BadRequest");
    assert_status(
        &cluster
            .get("/api/v1/namespaces/default/pods?labelSelector=a%20in%20(")
            .await,
        400,
        "BadRequest",
    );
    assert_status(
        &cluster
            .get("/api/v1/namespaces/default/pods?fieldSelector=spec.bogus%3D1")
            .await,
        400,
        "BadRequest",
    );
    assert_status(
        &cluster
            .post(
                "/api/v1/namespaces/nowhere/configmaps",
                configmap("c", json!({})),
            )
            .await,
        404,
        "NotFound",
    );
    assert_status(
        &cluster.send(Method::PUT, pods, None, None).await,
        405,
        "MethodNotAllowed",
    );
    // Nothing half-written: only the two valid pods exist.
    let list = cluster.get(pods).await;
    let mut names: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["from-yaml", "warned"]);
    cluster.stop().await;
}

#[tokio::test]
async fn selectors_paging_and_tables() {
    let cluster = start().await;
    let base = "/api/v1/namespaces/default/configmaps";
    for (name, labels) in [
        ("a", json!({"app": "web", "tier": "front"})),
        ("b", json!({"app": "api"})),
        ("c", json!({"app": "db"})),
        ("d", json!({})),
    ] {
        assert_eq!(
            cluster.post(base, configmap(name, labels)).await.status,
            StatusCode::CREATED
        );
    }
    let names = |reply: &Reply| -> Vec<String> {
        reply.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    for (selector, want) in [
        ("app%3Dweb", vec!["a"]),
        ("app%21%3Dweb", vec!["b", "c", "d"]),
        ("app%20in%20(web%2Capi)", vec!["a", "b"]),
        ("app%20notin%20(web)", vec!["b", "c", "d"]),
        ("tier", vec!["a"]),
        ("%21app", vec!["d"]),
    ] {
        assert_eq!(
            names(
                &cluster
                    .get(&format!("{base}?labelSelector={selector}"))
                    .await
            ),
            want,
            "{selector}"
        );
    }
    assert_eq!(
        names(
            &cluster
                .get(&format!("{base}?fieldSelector=metadata.name%3Dc"))
                .await
        ),
        vec!["c"]
    );
    assert_eq!(
        names(
            &cluster
                .get(&format!(
                    "{base}?fieldSelector=metadata.name%21%3Dc,metadata.namespace%3Ddefault"
                ))
                .await
        ),
        vec!["a", "b", "d"]
    );
    assert_eq!(
        names(
            &cluster
                .get("/api/v1/configmaps?fieldSelector=metadata.namespace%3Ddefault")
                .await
        )
        .len(),
        4
    );

    let page1 = cluster.get(&format!("{base}?limit=3")).await;
    assert_eq!(names(&page1), vec!["a", "b", "c"]);
    let token = page1.body["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_string();
    let page2 = cluster
        .get(&format!("{base}?limit=3&continue={token}"))
        .await;
    assert_eq!(names(&page2), vec!["d"]);
    assert!(page2.body["metadata"].get("continue").is_none());
    assert_status(
        &cluster
            .get(&format!("{base}?limit=3&continue=garbage"))
            .await,
        400,
        "BadRequest",
    );
    // A continue token whose revision was compacted away is 410 Expired.
    let current = cluster.store.current_revision().await.unwrap();
    assert_eq!(
        cluster.post(base, configmap("e", json!({}))).await.status,
        StatusCode::CREATED
    );
    cluster.store.compact(current + 1).await.unwrap();
    assert_status(
        &cluster
            .get(&format!("{base}?limit=3&continue={token}"))
            .await,
        410,
        "Expired",
    );

    let table = cluster.send(Method::GET, base, None, Some(TABLE)).await;
    assert_eq!(table.body["kind"], "Table");
    let columns: Vec<&str> = table.body["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, vec!["Name", "Data", "Age"]);
    assert_eq!(table.body["rows"][0]["cells"][0], "a");
    assert_eq!(table.body["rows"][0]["cells"][1], 1);
    assert_eq!(
        table.body["rows"][0]["object"]["kind"],
        "PartialObjectMetadata"
    );
    let pods = cluster.post("/api/v1/namespaces/default/pods", json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}})).await;
    assert_eq!(pods.status, StatusCode::CREATED);
    let pod_table = cluster
        .send(
            Method::GET,
            "/api/v1/namespaces/default/pods/p?includeObject=Object",
            None,
            Some(TABLE),
        )
        .await;
    let columns: Vec<&str> = pod_table.body["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        &columns[..5],
        &["Name", "Ready", "Status", "Restarts", "Age"]
    );
    assert_eq!(pod_table.body["rows"][0]["cells"][1], "0/1");
    assert_eq!(pod_table.body["rows"][0]["cells"][2], "Pending");
    assert_eq!(pod_table.body["rows"][0]["object"]["kind"], "Pod");
    cluster.stop().await;
}

#[tokio::test]
async fn watches_resume_filter_and_expire() {
    let cluster = start().await;
    let base = "/api/v1/namespaces/default/configmaps";
    let created = cluster
        .post(base, configmap("w", json!({"app": "web"})))
        .await;
    let created_rv = rv(&created.body);
    // Without a resourceVersion the watch starts with the current state.
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
    cluster
        .patch(
            &format!("{base}/w"),
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"app": "other"}}}),
        )
        .await;
    cluster.delete(&format!("{base}/w")).await;
    // Resuming from the creation sees what happened since, in order.
    let resumed = cluster
        .watch(
            &format!("{base}?watch=true&resourceVersion={created_rv}&timeoutSeconds=5"),
            3,
        )
        .await;
    let types: Vec<&str> = resumed
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["MODIFIED", "MODIFIED", "DELETED"]);
    // With a selector, the object leaving the selection is a DELETED, and the real delete is invisible.
    let filtered = cluster.watch(&format!("{base}?watch=true&resourceVersion={created_rv}&labelSelector=app%3Dweb&timeoutSeconds=2"), 3).await;
    let types: Vec<&str> = filtered
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["MODIFIED", "DELETED"]);

    // Bookmarks mark the end of the initial events when asked for.
    cluster.post(base, configmap("x", json!({}))).await;
    let bookmarked = cluster.watch(&format!("{base}?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=5"), 2).await;
    assert_eq!(bookmarked[1]["type"], "BOOKMARK");
    assert_eq!(
        bookmarked[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );

    // A version compacted away ends the watch with a 410 ERROR event.
    let current = cluster.store.current_revision().await.unwrap();
    cluster.store.compact(current).await.unwrap();
    let expired = cluster
        .watch(
            &format!("{base}?watch=true&resourceVersion={created_rv}"),
            1,
        )
        .await;
    assert_eq!(expired[0]["type"], "ERROR");
    assert_eq!(
        (
            expired[0]["object"]["code"].as_u64(),
            expired[0]["object"]["reason"].as_str()
        ),
        (Some(410), Some("Expired"))
    );

    // A Table watch carries the column definitions in its first event only.
    let watch_rv = rv(&cluster.post(base, configmap("t0", json!({}))).await.body);
    let client = cluster.client.clone();
    let url = cluster.url(&format!(
        "{base}?watch=true&resourceVersion={watch_rv}&timeoutSeconds=3"
    ));
    let token = cluster.running().token.clone();
    let table_watch = tokio::spawn(async move {
        let response = client
            .get(url)
            .bearer_auth(token)
            .header("Accept", TABLE)
            .send()
            .await
            .unwrap();
        response.text().await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.post(base, configmap("t1", json!({}))).await;
    cluster.post(base, configmap("t2", json!({}))).await;
    let text = table_watch.await.unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[0]["object"]["kind"], "Table");
    assert!(
        !events[0]["object"]["columnDefinitions"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        events[1]["object"]["columnDefinitions"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(events[1]["object"]["rows"][0]["cells"][0], "t2");
    cluster.stop().await;
}

fn deployment(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
    })
}

#[tokio::test]
async fn deployments_generation_status_and_scale() {
    let cluster = start().await;
    let base = "/apis/apps/v1/namespaces/default/deployments";
    let created = cluster.post(base, deployment("web")).await;
    assert_eq!(created.body["metadata"]["generation"], 1);
    assert_eq!(
        created.body["spec"]["strategy"]["type"], "RollingUpdate",
        "defaults are applied"
    );
    // Labels alone don't bump the generation; a spec change does.
    let labelled = cluster
        .patch(
            &format!("{base}/web"),
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"x": "y"}}}),
        )
        .await;
    assert_eq!(labelled.body["metadata"]["generation"], 1);
    let changed = cluster.patch(&format!("{base}/web"), "application/strategic-merge-patch+json", json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}}})).await;
    assert_eq!(changed.body["metadata"]["generation"], 2);
    // The main resource ignores status; the status subresource changes only status.
    let ignored = cluster
        .patch(
            &format!("{base}/web"),
            "application/merge-patch+json",
            json!({"status": {"replicas": 7}}),
        )
        .await;
    assert!(
        ignored.body["status"].get("replicas").is_none(),
        "{}",
        ignored.body
    );
    let status = cluster
        .patch(
            &format!("{base}/web/status"),
            "application/merge-patch+json",
            json!({"status": {"replicas": 2, "observedGeneration": 2}, "spec": {"replicas": 9}}),
        )
        .await;
    assert_eq!(
        (
            status.body["status"]["replicas"].as_i64(),
            status.body["spec"]["replicas"].as_i64()
        ),
        (Some(2), Some(2)),
        "{}",
        status.body
    );

    let scale = cluster.get(&format!("{base}/web/scale")).await;
    assert_eq!(
        (
            scale.body["kind"].as_str(),
            scale.body["apiVersion"].as_str()
        ),
        (Some("Scale"), Some("autoscaling/v1"))
    );
    assert_eq!(
        (
            scale.body["spec"]["replicas"].as_i64(),
            scale.body["status"]["selector"].as_str()
        ),
        (Some(2), Some("app=web"))
    );
    let scaled = cluster
        .patch(
            &format!("{base}/web/scale"),
            "application/merge-patch+json",
            json!({"spec": {"replicas": 5}}),
        )
        .await;
    assert_eq!(scaled.body["spec"]["replicas"], 5, "{}", scaled.body);
    let put_scale = cluster.put(&format!("{base}/web/scale"), json!({"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": {"name": "web"}, "spec": {"replicas": 1}})).await;
    assert_eq!(put_scale.body["spec"]["replicas"], 1);
    let after = cluster.get(&format!("{base}/web")).await;
    assert_eq!(
        (
            after.body["spec"]["replicas"].as_i64(),
            after.body["metadata"]["generation"].as_i64()
        ),
        (Some(1), Some(4))
    );

    // Server-side apply creates, then merges.
    let apply = |body: Value| {
        cluster.send(
            Method::PATCH,
            "/apis/apps/v1/namespaces/default/deployments/ssa?fieldManager=test",
            Some((
                "application/apply-patch+yaml",
                serde_json::to_vec(&body).unwrap(),
            )),
            None,
        )
    };
    let created = apply(deployment("ssa")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let mut changed = deployment("ssa");
    changed["spec"]["replicas"] = json!(3);
    let merged = apply(changed).await;
    assert_eq!(
        (merged.status, merged.body["spec"]["replicas"].as_i64()),
        (StatusCode::OK, Some(3))
    );

    // Foreground deletion keeps the object with a finalizer until the garbage collector is done.
    let foreground = cluster
        .send(
            Method::DELETE,
            &format!("{base}/web"),
            Some((
                "application/json",
                br#"{"propagationPolicy":"Foreground"}"#.to_vec(),
            )),
            None,
        )
        .await;
    assert_eq!(foreground.body["kind"], "Deployment", "{}", foreground.body);
    assert_eq!(
        foreground.body["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    assert!(foreground.body["metadata"]["deletionTimestamp"].is_string());
    let cleared = cluster
        .patch(
            &format!("{base}/web"),
            "application/merge-patch+json",
            json!({"metadata": {"finalizers": null}}),
        )
        .await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.body);
    assert_status(&cluster.get(&format!("{base}/web")).await, 404, "NotFound");
    cluster.stop().await;
}

#[tokio::test]
async fn services_get_cluster_ips_and_node_ports() {
    let cluster = start().await;
    let base = "/api/v1/namespaces/default/services";
    let svc = |name: &str, spec: Value| json!({"metadata": {"name": name}, "spec": spec});
    let a = cluster
        .post(
            base,
            svc(
                "a",
                json!({"ports": [{"port": 80}], "selector": {"app": "a"}}),
            ),
        )
        .await;
    let ip: std::net::Ipv4Addr = a.body["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ip.octets()[0], 10);
    assert!((96..112).contains(&ip.octets()[1]), "{ip} in 10.96.0.0/12");
    let taken = cluster
        .post(
            base,
            svc(
                "b",
                json!({"clusterIP": ip.to_string(), "ports": [{"port": 80}]}),
            ),
        )
        .await;
    assert_status(&taken, 422, "Invalid");
    let outside = cluster
        .post(
            base,
            svc(
                "b",
                json!({"clusterIP": "192.168.1.1", "ports": [{"port": 80}]}),
            ),
        )
        .await;
    assert_status(&outside, 422, "Invalid");
    let np = cluster
        .post(
            base,
            svc(
                "np",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30123}]}),
            ),
        )
        .await;
    assert_eq!(
        np.body["spec"]["ports"][0]["nodePort"], 30123,
        "{}",
        np.body
    );
    assert_status(
        &cluster
            .post(
                base,
                svc(
                    "np2",
                    json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30123}]}),
                ),
            )
            .await,
        422,
        "Invalid",
    );
    // Deleting returns the Service and frees its IP.
    let deleted = cluster.delete(&format!("{base}/a")).await;
    assert_eq!(deleted.body["kind"], "Service");
    let reuse = cluster
        .post(
            base,
            svc(
                "b",
                json!({"clusterIP": ip.to_string(), "ports": [{"port": 80}]}),
            ),
        )
        .await;
    assert_eq!(reuse.status, StatusCode::CREATED, "{}", reuse.body);
    cluster.stop().await;
}

#[tokio::test]
async fn pods_bind_and_terminate_gracefully() {
    let cluster = start().await;
    let base = "/api/v1/namespaces/default/pods";
    let pod = |name: &str| json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
    let created = cluster.post(base, pod("p")).await;
    assert_eq!(created.body["status"]["phase"], "Pending");
    let tolerations = created.body["spec"]["tolerations"].as_array().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/not-ready" && t["tolerationSeconds"] == 300)
    );
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}});
    let first = cluster
        .post(&format!("{base}/p/binding"), binding.clone())
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_status(
        &cluster.post(&format!("{base}/p/binding"), binding).await,
        409,
        "Conflict",
    );
    let bound = cluster.get(&format!("{base}/p")).await;
    assert_eq!(bound.body["spec"]["nodeName"], "n1");

    // A bound pod is marked and left for its node; the node's grace-0 delete removes it.
    let marked = cluster.delete(&format!("{base}/p")).await;
    assert_eq!(marked.body["kind"], "Pod");
    assert_eq!(marked.body["metadata"]["deletionGracePeriodSeconds"], 30);
    assert!(marked.body["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        cluster.get(&format!("{base}/p")).await.status,
        StatusCode::OK
    );
    let table = cluster.send(Method::GET, base, None, Some(TABLE)).await;
    assert_eq!(table.body["rows"][0]["cells"][2], "Terminating");
    let now = cluster
        .delete(&format!("{base}/p?gracePeriodSeconds=0"))
        .await;
    assert_eq!(now.body["kind"], "Pod");
    assert_status(&cluster.get(&format!("{base}/p")).await, 404, "NotFound");
    // An unscheduled pod goes at once.
    cluster.post(base, pod("q")).await;
    cluster.delete(&format!("{base}/q")).await;
    assert_status(&cluster.get(&format!("{base}/q")).await, 404, "NotFound");
    cluster.stop().await;
}

#[tokio::test]
async fn namespaces_protect_system_ones_and_clean_up_on_delete() {
    let cluster = start().await;
    let listed = cluster.get("/api/v1/namespaces").await;
    let names: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(names.contains(&ns), "{names:?}");
    }
    assert_status(
        &cluster.delete("/api/v1/namespaces/default").await,
        403,
        "Forbidden",
    );
    assert_eq!(
        cluster
            .post("/api/v1/namespaces", json!({"metadata": {"name": "demo"}}))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        cluster
            .post(
                "/api/v1/namespaces/demo/configmaps",
                configmap("c", json!({}))
            )
            .await
            .status,
        StatusCode::CREATED
    );
    let kept = cluster
        .post(
            "/api/v1/namespaces/demo/configmaps",
            json!({"metadata": {"name": "kept", "finalizers": ["example.com/hold"]}}),
        )
        .await;
    assert_eq!(kept.status, StatusCode::CREATED);
    let terminating = cluster.delete("/api/v1/namespaces/demo").await;
    assert_eq!(
        terminating.body["status"]["phase"], "Terminating",
        "{}",
        terminating.body
    );
    let refused = cluster
        .post(
            "/api/v1/namespaces/demo/configmaps",
            configmap("late", json!({})),
        )
        .await;
    assert_status(&refused, 403, "Forbidden");
    // The namespace waits for the finalizer of what is left in it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_status(
        &cluster.get("/api/v1/namespaces/demo/configmaps/c").await,
        404,
        "NotFound",
    );
    assert_eq!(
        cluster.get("/api/v1/namespaces/demo").await.status,
        StatusCode::OK
    );
    cluster
        .patch(
            "/api/v1/namespaces/demo/configmaps/kept",
            "application/merge-patch+json",
            json!({"metadata": {"finalizers": null}}),
        )
        .await;
    let mut gone = false;
    for _ in 0..50 {
        if cluster.get("/api/v1/namespaces/demo").await.status == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the namespace is removed once empty");
    cluster.stop().await;
}

#[tokio::test]
async fn periodic_compaction_expires_old_versions_but_keeps_the_latest() {
    keel_tests::api_client::check_periodic_compaction(Backend::Embedded).await;
}

//! Golden tests of the pure translation: Services + EndpointSlices (YAML in `tests/golden/`)
//! → the map entries they imply (`.expected` beside each). No privileges needed.
//! Regenerate after an intended change with `KEEL_BLESS=1 cargo test -p keel-tests --test golden`
//! and review the diff.
use std::path::{Path, PathBuf};

use keel_agent::{
    datapath::{
        state::{MapOp, MapState},
        translate::{NodeContext, translate},
    },
    manifest,
};

fn node() -> NodeContext {
    NodeContext {
        node_name: "node-a".into(),
    }
}

fn render(yaml: &str) -> String {
    let objs = manifest::parse(yaml).expect("golden input parses");
    let desired = translate(&objs.services, &objs.slices, &node());
    let plan = MapState::default().plan(&desired);
    let mut out = plan.next.dump();
    if !desired.warnings.is_empty() {
        out.push_str("warnings:\n");
        for w in &desired.warnings {
            out.push_str(&format!("  {w}\n"));
        }
    }
    out
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden")
}

#[test]
fn golden_translations() {
    let bless = std::env::var_os("KEEL_BLESS").is_some();
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("tests/golden exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 5, "golden inputs missing");
    let mut failures = Vec::new();
    for input in inputs {
        let got = render(&std::fs::read_to_string(&input).unwrap());
        let expected_path = input.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
            panic!("{} missing: run with KEEL_BLESS=1", expected_path.display())
        });
        if got != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}\n--- got\n{got}",
                input.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn translation_ignores_input_order() {
    let text = std::fs::read_to_string(golden_dir().join("clusterip.yaml")).unwrap();
    let mut objs = manifest::parse(&text).unwrap();
    let a = translate(&objs.services, &objs.slices, &node());
    objs.services.reverse();
    objs.slices.reverse();
    let b = translate(&objs.services, &objs.slices, &node());
    assert_eq!(a, b);
}

const BASE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.244.0.1]}
- {addresses: [10.244.0.2]}
- {addresses: [10.244.0.3]}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: default}
spec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other-1, namespace: default, labels: {kubernetes.io/service-name: other}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.244.0.9]}
"#;

fn state_of(yaml: &str, from: &MapState) -> (Vec<MapOp>, MapState) {
    let objs = manifest::parse(yaml).unwrap();
    let plan = from.plan(&translate(&objs.services, &objs.slices, &node()));
    (plan.ops, plan.next)
}

#[test]
fn an_endpoint_change_writes_only_what_it_changes() {
    let (first, s1) = state_of(BASE, &MapState::default());
    // 4 backends + 2 rev-NAT + (1 head + 3 slots) + (1 head + 1 slot).
    assert_eq!(first.len(), 12, "{first:#?}");

    // The same state again writes nothing.
    let (again, _) = state_of(BASE, &s1);
    assert!(again.is_empty(), "{again:#?}");

    // Removing the middle endpoint of `web`: the last slot moves into its place, the count
    // shrinks, the old last slot and the backend go. `other` is untouched.
    let removed = BASE.replace("- {addresses: [10.244.0.2]}\n", "");
    let (ops, s2) = state_of(&removed, &s1);
    let rendered: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
    assert_eq!(ops.len(), 4, "{rendered:#?}");
    assert!(matches!(ops[0], MapOp::PutService(k, v) if k.slot == 2 && v.backend_id == 3));
    assert!(matches!(ops[1], MapOp::PutService(k, v) if k.slot == 0 && v.count == 2));
    assert!(matches!(ops[2], MapOp::DeleteService(k) if k.slot == 3));
    assert!(matches!(ops[3], MapOp::DeleteBackend(2)));

    // Adding an endpoint: one backend, one slot, the head.
    let added = removed.replace(
        "- {addresses: [10.244.0.3]}\n",
        "- {addresses: [10.244.0.3]}\n- {addresses: [10.244.0.4]}\n",
    );
    let (ops, _) = state_of(&added, &s2);
    assert_eq!(ops.len(), 3, "{ops:#?}");
    assert!(matches!(ops[0], MapOp::PutBackend(_, _)));
    assert!(matches!(ops[1], MapOp::PutService(k, _) if k.slot == 3));
    assert!(matches!(ops[2], MapOp::PutService(k, v) if k.slot == 0 && v.count == 3));
}

#[test]
fn a_removed_backend_id_is_not_reused_by_the_same_plan() {
    let (_, s1) = state_of(BASE, &MapState::default());
    // Swap one endpoint for a new one in a single change.
    let swapped = BASE.replace("10.244.0.2]", "10.244.0.7]");
    let (ops, s2) = state_of(&swapped, &s1);
    let put_ids: Vec<u32> = ops
        .iter()
        .filter_map(|o| {
            if let MapOp::PutBackend(id, _) = o {
                Some(*id)
            } else {
                None
            }
        })
        .collect();
    let del_ids: Vec<u32> = ops
        .iter()
        .filter_map(|o| {
            if let MapOp::DeleteBackend(id) = o {
                Some(*id)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(del_ids, vec![2]);
    assert!(!put_ids.contains(&2), "{ops:#?}");
    assert!(s2.dump().contains("10.244.0.7:8080/TCP"));
}

#[test]
fn a_udp_backend_that_leaves_is_retired_and_unretired_when_it_returns() {
    let udp = BASE
        .replace("ports: [{port: 80}]", "ports: [{port: 53, protocol: UDP}]")
        .replace(
            "ports: [{port: 8080}]",
            "ports: [{port: 5353, protocol: UDP}]",
        );
    let (_, s1) = state_of(&udp, &MapState::default());
    let gone = udp.replace("- {addresses: [10.244.0.2]}\n", "");
    let (ops, s2) = state_of(&gone, &s1);
    assert!(
        ops.iter().any(
            |o| matches!(o, MapOp::Retire(a, _) if a.addr == u32::from_ne_bytes([10, 244, 0, 2]))
        ),
        "{ops:#?}"
    );
    assert!(s2.dump().contains("retired:\n  10.244.0.2:5353/UDP"));
    let (ops, s3) = state_of(&udp, &s2);
    assert!(
        ops.iter().any(|o| matches!(o, MapOp::Unretire(_))),
        "{ops:#?}"
    );
    assert!(!s3.dump().contains("retired:"));
}

#[test]
fn bad_manifests_are_reported_not_panicked_on() {
    for (text, needle) in [
        (
            "kind: Service\napiVersion: v1\nspec: {ports: notalist}",
            "document 1",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}",
            "unsupported kind",
        ),
        ("{{{{", "document 1"),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n: :\n  - [",
            "document 2",
        ),
    ] {
        let err = manifest::parse(text).expect_err(text).to_string();
        assert!(err.contains(needle), "{text:?} gave {err:?}");
    }
}

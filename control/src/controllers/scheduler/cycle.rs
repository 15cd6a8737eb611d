//! One scheduling cycle, as kube-scheduler's `schedulePod`: filter nodes (stopping once enough
//! feasible ones are found, starting where the previous cycle stopped), score the feasible
//! ones, pick the best (ties at random) and assume the pod there. Pure: no I/O, no waiting.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use rand::Rng;

use super::cache::Cache;
use super::plugins::{self, PodInfo, Reason};

/// kube's `minFeasibleNodesToFind`.
const MIN_FEASIBLE_NODES: usize = 100;
/// kube's `minFeasibleNodesPercentageToFind`.
const MIN_FEASIBLE_PERCENTAGE: usize = 5;

/// How many feasible nodes to look for among `node_count` (kube's adaptive
/// `percentageOfNodesToScore`: 50% minus 1% per 125 nodes, at least 5%, at least 100 nodes).
pub fn feasible_nodes_to_find(node_count: usize) -> usize {
    if node_count < MIN_FEASIBLE_NODES {
        return node_count;
    }
    let percentage = 50usize
        .saturating_sub(node_count / 125)
        .max(MIN_FEASIBLE_PERCENTAGE);
    (node_count * percentage / 100).max(MIN_FEASIBLE_NODES)
}

/// Buffers reused from one cycle to the next.
#[derive(Default)]
pub struct Scratch {
    feasible: Vec<usize>,
    least_allocated: Vec<i64>,
    affinity: Vec<i64>,
    taints: Vec<i64>,
    spread: Vec<i64>,
}

/// The result of a cycle.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Assumed on this node; bind it.
    Assumed(String),
    /// No node can run the pod; kube-scheduler's message says why.
    Unschedulable(String),
}

/// Schedules one pod (with queue key `key`) over the cache and assumes it on the chosen node.
pub fn schedule_one(
    cache: &mut Cache,
    key: &str,
    pod: &Pod,
    scratch: &mut Scratch,
    rng: &mut impl Rng,
) -> Outcome {
    let node_count = cache.node_count();
    if node_count == 0 {
        return Outcome::Unschedulable(plugins::failure_message(0, &BTreeMap::new()));
    }
    let info = PodInfo::new(pod, cache);
    let (next_start, chosen) = {
        let nodes = cache.nodes();
        let wanted = feasible_nodes_to_find(node_count);
        let start = cache.next_start % nodes.len();
        let mut reasons: BTreeMap<Reason<'_>, usize> = BTreeMap::new();
        scratch.feasible.clear();
        let mut scanned = 0;
        while scanned < nodes.len() && scratch.feasible.len() < wanted {
            let i = (start + scanned) % nodes.len();
            scanned += 1;
            let node = &nodes[i];
            if node.node.is_none() {
                continue;
            }
            match plugins::filter(&info, node) {
                Ok(()) => scratch.feasible.push(i),
                Err(failed) => {
                    for reason in failed.iter() {
                        *reasons.entry(reason).or_default() += 1;
                    }
                }
            }
        }
        let next_start = (start + scanned) % nodes.len();
        if scratch.feasible.is_empty() {
            (
                next_start,
                Err(plugins::failure_message(node_count, &reasons)),
            )
        } else {
            let chosen = select(&info, cache, scratch, rng);
            (next_start, Ok(nodes[chosen].name.clone()))
        }
    };
    cache.next_start = next_start;
    match chosen {
        Ok(node) => {
            cache.assume(key, pod, &node, info.resources);
            Outcome::Assumed(node)
        }
        Err(message) => Outcome::Unschedulable(message),
    }
}

/// Scores the feasible nodes and picks the best, breaking ties uniformly at random (reservoir
/// sampling, as kube's `selectHost`).
fn select(info: &PodInfo, cache: &Cache, scratch: &mut Scratch, rng: &mut impl Rng) -> usize {
    if scratch.feasible.len() == 1 {
        return scratch.feasible[0];
    }
    let nodes = cache.nodes();
    let Scratch {
        feasible,
        least_allocated,
        affinity,
        taints,
        spread,
    } = scratch;
    for buffer in [
        &mut *least_allocated,
        &mut *affinity,
        &mut *taints,
        &mut *spread,
    ] {
        buffer.clear();
    }
    for &i in feasible.iter() {
        let node = &nodes[i];
        least_allocated.push(plugins::least_allocated(info, node));
        affinity.push(plugins::preferred_affinity(info, node));
        taints.push(plugins::intolerable_taints(info, node));
        spread.push(plugins::owner_pods(info, node));
    }
    plugins::normalize(affinity, false);
    plugins::normalize(taints, true);
    plugins::normalize_spread(spread);
    let mut best = feasible[0];
    let mut best_score = i64::MIN;
    let mut ties = 0u32;
    for (j, &i) in feasible.iter().enumerate() {
        let score = least_allocated[j] * plugins::WEIGHT_LEAST_ALLOCATED
            + affinity[j] * plugins::WEIGHT_NODE_AFFINITY
            + taints[j] * plugins::WEIGHT_TAINT_TOLERATION
            + spread[j] * plugins::WEIGHT_SPREAD;
        if score > best_score {
            best_score = score;
            best = i;
            ties = 1;
        } else if score == best_score {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                best = i;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::super::cache::tests::{node, pod};
    use super::*;

    #[test]
    fn the_share_of_nodes_to_score_shrinks_with_the_cluster() {
        assert_eq!(feasible_nodes_to_find(3), 3);
        assert_eq!(feasible_nodes_to_find(100), 100);
        assert_eq!(feasible_nodes_to_find(150), 100);
        assert_eq!(feasible_nodes_to_find(1000), 420);
        assert_eq!(feasible_nodes_to_find(5000), 500);
        assert_eq!(feasible_nodes_to_find(10_000), 500);
    }

    #[test]
    fn an_impossible_pod_gets_kube_schedulers_message() {
        let mut cache = Cache::default();
        let mut rng = StdRng::seed_from_u64(1);
        let mut scratch = Scratch::default();
        let p = pod("a", 500, 0, None);
        assert_eq!(
            schedule_one(&mut cache, "default/a", &p, &mut scratch, &mut rng),
            Outcome::Unschedulable("no nodes available to schedule pods".into())
        );
        cache.set_node(Arc::new(node("small", 100, 1024)));
        let mut labelled = node("labelled", 4000, 1024);
        labelled
            .metadata
            .labels
            .get_or_insert_default()
            .insert("disk".into(), "hdd".into());
        cache.set_node(Arc::new(labelled));
        cache.set_node(Arc::new(node("other", 4000, 1024)));
        let mut picky = pod("b", 500, 0, None);
        picky.spec.as_mut().unwrap().node_selector = Some(std::collections::BTreeMap::from([(
            "disk".into(),
            "ssd".into(),
        )]));
        assert_eq!(
            schedule_one(&mut cache, "default/b", &picky, &mut scratch, &mut rng),
            Outcome::Unschedulable(
                "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
                    .into()
            )
        );
        let mut hdd = pod("c", 500, 0, None);
        hdd.spec.as_mut().unwrap().node_selector = Some(std::collections::BTreeMap::from([(
            "disk".into(),
            "hdd".into(),
        )]));
        hdd.spec.as_mut().unwrap().containers[0]
            .resources
            .as_mut()
            .unwrap()
            .requests
            .as_mut()
            .unwrap()
            .insert(
                "cpu".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("8".into()),
            );
        assert_eq!(
            schedule_one(&mut cache, "default/c", &hdd, &mut scratch, &mut rng),
            Outcome::Unschedulable(
                "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector.".into()
            )
        );
        assert!(!cache.is_assumed("default/c"));
    }

    #[test]
    fn placed_pods_are_assumed_and_the_next_one_sees_them() {
        let mut cache = Cache::default();
        let mut rng = StdRng::seed_from_u64(1);
        let mut scratch = Scratch::default();
        cache.set_node(Arc::new(node("n1", 1000, 1024)));
        cache.set_node(Arc::new(node("n2", 1000, 1024)));
        let a = pod("a", 800, 0, None);
        let Outcome::Assumed(first) =
            schedule_one(&mut cache, "default/a", &a, &mut scratch, &mut rng)
        else {
            panic!("a fits");
        };
        assert!(cache.is_assumed("default/a"));
        let b = pod("b", 800, 0, None);
        let Outcome::Assumed(second) =
            schedule_one(&mut cache, "default/b", &b, &mut scratch, &mut rng)
        else {
            panic!("b fits");
        };
        assert_ne!(first, second);
        let c = pod("c", 800, 0, None);
        assert_eq!(
            schedule_one(&mut cache, "default/c", &c, &mut scratch, &mut rng),
            Outcome::Unschedulable("0/2 nodes are available: 2 Insufficient cpu.".into())
        );
    }

    #[test]
    fn two_thousand_pods_spread_evenly_over_a_thousand_nodes() {
        let mut cache = Cache::default();
        let mut rng = StdRng::seed_from_u64(7);
        let mut scratch = Scratch::default();
        for i in 0..1000 {
            cache.set_node(Arc::new(node(&format!("node-{i:04}"), 4000, 16384)));
        }
        for i in 0..2000 {
            let p = pod(&format!("p-{i}"), 100, 128, Some("rs-1"));
            let outcome = schedule_one(
                &mut cache,
                &format!("default/p-{i}"),
                &p,
                &mut scratch,
                &mut rng,
            );
            assert!(
                matches!(outcome, Outcome::Assumed(_)),
                "pod {i}: {outcome:?}"
            );
        }
        let counts: Vec<i64> = cache.nodes().iter().map(|n| n.pod_count).collect();
        assert_eq!(counts.iter().sum::<i64>(), 2000);
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min >= 1 && *max <= 3, "uneven spread: {min}..{max}");
        let owner = cache.owner_id("rs-1").unwrap();
        assert!(
            cache
                .nodes()
                .iter()
                .all(|n| n.owner_count(owner) as i64 == n.pod_count)
        );
    }
}

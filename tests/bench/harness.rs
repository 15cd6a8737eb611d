//! The measurement plan: build the topology and backends once, then for each scale and
//! repetition measure every datapath in turn (rotating their order between repetitions, so
//! drift hits all of them alike). A datapath's rules or programs exist only during its own runs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keel_tests::cgroup::{self, Cgroup};
use keel_tests::netns::{self, POD_CIDR, POD_GATEWAY, Topology, set_sysctl};
use keel_tests::process::{Limits, run_in};

use crate::backends::Backends;
use crate::catalogue::{Catalogue, HTTP_PORT, IPERF_PORT};
use crate::iptables::{self, LoadedTable};
use crate::keel::{self, LoadedKeel};
use crate::load::{Client, Durations};
use crate::report::{DatapathKind, Row, Samples};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scales: Vec<usize>,
    pub reps: u32,
    pub datapaths: Vec<DatapathKind>,
    pub durations: Durations,
}

/// The results, and what went wrong along the way (the run goes on after a failed measurement).
pub struct Outcome {
    pub rows: Vec<Row>,
    pub failures: Vec<String>,
}

/// The test bed. Field order is drop order: servers, then the cgroup, then the namespaces.
struct Bed {
    _backends: Backends,
    client_cgroup: Cgroup,
    topology: Topology,
}

const CLIENT: usize = 0;
const BACKENDS: [usize; 3] = [1, 2, 3];

fn interrupted(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

fn check_tools(datapaths: &[DatapathKind]) -> Result<()> {
    let mut tools = vec![
        ("wrk", "wrk"),
        ("iperf3", "iperf3"),
        ("nginx", "nginx-light"),
    ];
    if datapaths.contains(&DatapathKind::Iptables) {
        tools.extend([("iptables-restore", "iptables"), ("nft", "nftables")]);
    }
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(tool, package)| format!("{tool} (Debian package {package})"))
        .collect();
    if !missing.is_empty() {
        bail!("missing tools: {}", missing.join(", "));
    }
    Ok(())
}

impl Bed {
    fn build(cancel: &AtomicBool) -> Result<Bed> {
        let swept = netns::sweep_stale() + cgroup::sweep_stale() + keel::sweep_stale_pins();
        if swept > 0 {
            eprintln!("removed {swept} leftovers of killed runs");
        }
        let topology = Topology::builder().pods(1 + BACKENDS.len()).build()?;
        let client_ns = topology.pod(CLIENT).netns();
        // One client address opens many connections per second: use every port.
        set_sysctl(client_ns, "net.ipv4.ip_local_port_range", "1024 65535")?;
        let client_cgroup = Cgroup::create()?;
        let pods: Vec<_> = BACKENDS.iter().map(|&i| topology.pod(i)).collect();
        let backends = Backends::start(&pods, topology.node_netns(), cancel)?;
        Ok(Bed {
            _backends: backends,
            client_cgroup,
            topology,
        })
    }

    fn backend_ips(&self) -> Vec<Ipv4Addr> {
        BACKENDS
            .iter()
            .map(|&i| self.topology.pod(i).ip())
            .collect()
    }

    fn client<'a>(&'a self, durations: Durations, cancel: &'a AtomicBool) -> Client<'a> {
        Client {
            netns: self.topology.pod(CLIENT).netns(),
            cgroup: &self.client_cgroup,
            durations,
            cancel,
        }
    }
}

/// Runs the plan.
pub fn run(plan: &Plan, cancel: &AtomicBool) -> Result<Outcome> {
    if !keel_tests::privilege::is_root() {
        bail!("keel-bench needs root (network namespaces, iptables, BPF)");
    }
    check_tools(&plan.datapaths)?;
    eprintln!("setting up namespaces and backends");
    let bed = Bed::build(cancel)?;
    let mut outcome = Outcome {
        rows: Vec::new(),
        failures: Vec::new(),
    };
    for &scale in &plan.scales {
        interrupted(cancel)?;
        let rows = measure_scale(&bed, plan, scale, cancel, &mut outcome.failures)?;
        outcome.rows.extend(rows);
    }
    Ok(outcome)
}

/// Everything each datapath needs at one scale, prepared outside the timed sections.
struct Prepared {
    catalogue: Catalogue,
    ruleset: Option<String>,
    objects: Option<(Vec<Service>, Vec<EndpointSlice>)>,
}

fn measure_scale(
    bed: &Bed,
    plan: &Plan,
    scale: usize,
    cancel: &AtomicBool,
    failures: &mut Vec<String>,
) -> Result<Vec<Row>> {
    eprintln!("== {scale} services");
    let catalogue = Catalogue::new(scale, &bed.backend_ips())?;
    let ruleset = plan
        .datapaths
        .contains(&DatapathKind::Iptables)
        .then(|| iptables::ruleset(&catalogue, POD_CIDR));
    let objects = plan
        .datapaths
        .contains(&DatapathKind::Keel)
        .then(|| keel::k8s_objects(&catalogue));
    let prepared = Prepared {
        catalogue,
        ruleset,
        objects,
    };

    let mut samples: BTreeMap<&'static str, Samples> = BTreeMap::new();
    for rep in 0..plan.reps {
        let mut order = plan.datapaths.clone();
        let shift = rep as usize % order.len().max(1);
        order.rotate_left(shift);
        for dp in order {
            interrupted(cancel)?;
            let s = samples.entry(dp.name()).or_default();
            let label = format!(
                "{scale} services, rep {}/{}, {}",
                rep + 1,
                plan.reps,
                dp.name()
            );
            if let Err(e) = measure(bed, plan, &prepared, dp, cancel, s, &label, failures) {
                interrupted(cancel)?;
                eprintln!("  {label}: FAILED: {e:#}");
                failures.push(format!("{label}: {e:#}"));
            }
        }
    }
    Ok(plan
        .datapaths
        .iter()
        .map(|&dp| {
            samples
                .get(dp.name())
                .cloned()
                .unwrap_or_default()
                .row(dp, scale)
        })
        .collect())
}

#[allow(clippy::too_many_arguments)]
fn measure(
    bed: &Bed,
    plan: &Plan,
    prepared: &Prepared,
    dp: DatapathKind,
    cancel: &AtomicBool,
    samples: &mut Samples,
    label: &str,
    failures: &mut Vec<String>,
) -> Result<()> {
    let node_ns = bed.topology.node_netns();
    let client = bed.client(plan.durations, cancel);
    let http_vip = SocketAddrV4::new(prepared.catalogue.http_target().vip, HTTP_PORT);
    let iperf_vip = SocketAddrV4::new(prepared.catalogue.iperf_target().vip, IPERF_PORT);
    match dp {
        DatapathKind::Direct => {
            let backend = bed.topology.pod(BACKENDS[0]).ip();
            let targets = (
                SocketAddrV4::new(backend, HTTP_PORT),
                SocketAddrV4::new(backend, IPERF_PORT),
            );
            run_loads(&client, targets, None, samples, label, failures);
        }
        DatapathKind::Iptables => {
            let rules = prepared.ruleset.as_deref().context("no ruleset prepared")?;
            let (table, took) = LoadedTable::load(
                node_ns,
                rules,
                Limits::timeout(Duration::from_secs(600)).cancel_on(cancel),
            )?;
            samples.program_s.push(took.as_secs_f64());
            probe(bed, http_vip, cancel)?;
            run_loads(
                &client,
                (http_vip, iperf_vip),
                Some(took),
                samples,
                label,
                failures,
            );
            drop(table);
        }
        DatapathKind::Keel => {
            let (services, slices) = prepared.objects.as_ref().context("no objects prepared")?;
            let veths = bed.topology.host_veths();
            let (keel, took) = LoadedKeel::load(
                node_ns,
                bed.client_cgroup.path(),
                &veths,
                &[POD_GATEWAY],
                services,
                slices,
            )?;
            samples.program_s.push(took.as_secs_f64());
            probe(bed, http_vip, cancel)?;
            run_loads(
                &client,
                (http_vip, iperf_vip),
                Some(took),
                samples,
                label,
                failures,
            );
            keel.unload()?;
        }
    }
    Ok(())
}

/// Measures the three loads against `(http, iperf)` targets, recording what succeeds.
fn run_loads(
    client: &Client<'_>,
    (http, iperf): (SocketAddrV4, SocketAddrV4),
    program_time: Option<Duration>,
    samples: &mut Samples,
    label: &str,
    failures: &mut Vec<String>,
) {
    let mut figures = Vec::new();
    if let Some(t) = program_time {
        figures.push(format!("programmed in {:.3} s", t.as_secs_f64()));
    }
    let mut record =
        |result: Result<f64>, into: &mut Vec<f64>, unit: &str, decimals: usize| match result {
            Ok(v) => {
                into.push(v);
                figures.push(format!("{v:.decimals$} {unit}"));
            }
            Err(e) => {
                figures.push(format!("{unit}: FAILED"));
                failures.push(format!("{label}: {e:#}"));
                eprintln!("  {label}: {e:#}");
            }
        };
    record(
        client.connection_rate(http),
        &mut samples.conn_per_s,
        "conn/s",
        0,
    );
    record(client.request_rate(http), &mut samples.rr_per_s, "req/s", 0);
    record(
        client.throughput(iperf),
        &mut samples.gbit_per_s,
        "Gbit/s",
        2,
    );
    eprintln!("  {label}: {}", figures.join(", "));
}

/// Checks that HTTP requests to `target` from the client pod (and its cgroup) succeed before
/// measuring, so a broken datapath fails loudly instead of producing a figure of zero.
fn probe(bed: &Bed, target: SocketAddrV4, cancel: &AtomicBool) -> Result<()> {
    let exe = std::env::current_exe().context("locating keel-bench")?;
    let mut cmd = Command::new(exe);
    cmd.args(["probe", "--to", &target.to_string(), "--count", "6"]);
    run_in(
        bed.topology.pod(CLIENT).netns(),
        Some(&bed.client_cgroup),
        cmd,
        Limits::timeout(Duration::from_secs(30)).cancel_on(cancel),
    )
    .with_context(|| format!("{target} does not answer through the datapath"))?;
    Ok(())
}

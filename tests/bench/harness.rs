//! The measurement plan: build the topology and backends once; then for each scale, for each
//! datapath in turn: program it (timed), check that it serves, measure `reps` rounds of the three
//! loads (the figures are medians), and remove it. A datapath's rules or programs exist only
//! during its own runs, so the others never pay for them.

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

use crate::backends::{self, Backends};
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

/// Other work on a 2-core machine skews every figure: say so up front.
fn warn_if_busy() {
    let load = std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| {
        s.split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
    });
    if let Some(load) = load.filter(|&l| l > 1.0) {
        eprintln!("warning: the machine is busy (load average {load:.1}): figures will be noisy");
    }
}

impl Bed {
    fn build(cancel: &AtomicBool) -> Result<Bed> {
        let swept = netns::sweep_stale()
            + cgroup::sweep_stale()
            + keel::sweep_stale_pins()
            + backends::sweep_stale_temp_files();
        if swept > 0 {
            eprintln!("removed {swept} leftovers of killed runs");
        }
        let topology = Topology::builder().pods(1 + BACKENDS.len()).build()?;
        let client_ns = topology.pod(CLIENT).netns();
        // One client address opens many connections per second: use every port.
        set_sysctl(client_ns, "net.ipv4.ip_local_port_range", "1024 65535")?;
        // The backends close each `Connection: close` connection first, so they would keep it
        // in TIME_WAIT for 60 s. A later SYN from the same client port finds it, and whether
        // it's accepted depends on its sequence number and timestamp, which the client derives
        // from the address it connected to: after runs through a VIP (iptables DNAT), connections
        // to the pod IP collide with those TIME_WAITs half the time (and vice versa), each
        // stalling for a SYN retransmission. No TIME_WAIT on the backends keeps runs independent.
        for &i in &BACKENDS {
            set_sysctl(topology.pod(i).netns(), "net.ipv4.tcp_max_tw_buckets", "0")?;
        }
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
    warn_if_busy();
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

    let mut rows = Vec::new();
    for &dp in &plan.datapaths {
        interrupted(cancel)?;
        let label = format!("{scale} services, {}", dp.name());
        let mut samples = Samples::default();
        if let Err(e) = measure(
            bed,
            plan,
            &prepared,
            dp,
            cancel,
            &mut samples,
            &label,
            failures,
        ) {
            interrupted(cancel)?;
            eprintln!("  {label}: FAILED: {e:#}");
            failures.push(format!("{label}: {e:#}"));
        }
        rows.push(samples.row(dp, scale));
    }
    Ok(rows)
}

/// Sets up datapath `dp` (timing its programming), checks it works, measures `plan.reps`
/// times, and removes it again.
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
    let vips = Targets {
        http: vec![SocketAddrV4::new(
            prepared.catalogue.http_target().vip,
            HTTP_PORT,
        )],
        iperf: SocketAddrV4::new(prepared.catalogue.iperf_target().vip, IPERF_PORT),
    };
    let run_reps = |samples: &mut Samples, failures: &mut Vec<String>, targets: &Targets| {
        for rep in 1..=plan.reps {
            interrupted(cancel)?;
            let label = format!("{label}, rep {rep}/{}", plan.reps);
            run_loads(&client, targets, samples, &label, failures)?;
        }
        Ok::<(), anyhow::Error>(())
    };
    match dp {
        DatapathKind::Direct => {
            // wrk's threads take the backends in turn: one nginx process must not be the limit.
            let backends = bed.backend_ips();
            let targets = Targets {
                http: backends
                    .iter()
                    .map(|&ip| SocketAddrV4::new(ip, HTTP_PORT))
                    .collect(),
                iperf: SocketAddrV4::new(backends[0], IPERF_PORT),
            };
            run_reps(samples, failures, &targets)?;
        }
        DatapathKind::Iptables => {
            let rules = prepared.ruleset.as_deref().context("no ruleset prepared")?;
            let limits = Limits::timeout(Duration::from_secs(600)).cancel_on(cancel);
            let (table, took) = LoadedTable::load(node_ns, rules, limits)?;
            eprintln!("  {label}: loaded in {:.3} s", took.as_secs_f64());
            samples.program_s.push(took.as_secs_f64());
            probe(bed, vips.http[0], cancel)?;
            run_reps(samples, failures, &vips)?;
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
            eprintln!("  {label}: programmed in {:.3} s", took.as_secs_f64());
            samples.program_s.push(took.as_secs_f64());
            probe(bed, vips.http[0], cancel)?;
            run_reps(samples, failures, &vips)?;
            keel.unload()?;
        }
    }
    Ok(())
}

/// Where the loads go: HTTP (wrk) and iperf3.
struct Targets {
    http: Vec<SocketAddrV4>,
    iperf: SocketAddrV4,
}

/// Measures the three loads once, recording what succeeds; fails only when interrupted.
fn run_loads(
    client: &Client<'_>,
    targets: &Targets,
    samples: &mut Samples,
    label: &str,
    failures: &mut Vec<String>,
) -> Result<()> {
    let mut figures = Vec::new();
    let mut record = |result: Result<f64>, into: &mut Vec<f64>, unit: &str, decimals: usize| {
        interrupted(client.cancel)?;
        match result {
            Ok(v) => {
                into.push(v);
                figures.push(format!("{v:.decimals$} {unit}"));
            }
            Err(e) => {
                figures.push(format!("{unit}: FAILED"));
                failures.push(format!("{label}: {e:#}"));
                eprintln!("  {label}: {e:#}");
            }
        }
        Ok::<(), anyhow::Error>(())
    };
    record(
        client.connection_rate(&targets.http),
        &mut samples.conn_per_s,
        "conn/s",
        0,
    )?;
    record(
        client.request_rate(&targets.http),
        &mut samples.rr_per_s,
        "req/s",
        0,
    )?;
    record(
        client.throughput(targets.iperf),
        &mut samples.gbit_per_s,
        "Gbit/s",
        2,
    )?;
    eprintln!("  {label}: {}", figures.join(", "));
    Ok(())
}

/// Checks that HTTP requests to `target` from the client pod (and its cgroup) succeed before
/// measuring, so a broken datapath fails loudly instead of producing a figure of zero.
fn probe(bed: &Bed, target: SocketAddrV4, cancel: &AtomicBool) -> Result<()> {
    // /proc/self/exe, resolved in the forked child, still runs this binary if a rebuild has
    // replaced the file meanwhile.
    let mut cmd = Command::new("/proc/self/exe");
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

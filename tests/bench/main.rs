//! `keel-bench`: Keel's datapath against kube-proxy-shaped iptables rules and the direct pod IP,
//! in network namespaces (client pod → node → 3 backend pods), at several numbers of services:
//! new-connection rate, keep-alive request rate, single-stream throughput and the time to
//! program all services. Needs root, wrk, iperf3, nginx (nginx-light), iptables and nftables;
//! the chart needs python3-matplotlib.
//!
//! Modules: [`catalogue`] (the services), [`iptables`] (kube-proxy's nat table, loaded and
//! removed), [`keel`] (Keel's datapath, loaded and torn down), [`backends`] (nginx and iperf3
//! servers), [`load`] (wrk and iperf3 clients), [`harness`] (the plan), [`report`] (table, JSON,
//! chart), [`probe`] (a request check run inside the client pod).

mod backends;
mod catalogue;
mod harness;
mod iptables;
mod keel;
mod load;
mod loadgen;
mod probe;
mod report;

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::harness::Plan;
use crate::load::Durations;
use crate::report::DatapathKind;

#[derive(Parser)]
#[command(about = "Benchmark Keel's datapath against iptables (kube-proxy) and direct pod IPs")]
struct Cli {
    #[command(subcommand)]
    command: Option<Internal>,
    /// Short runs, scales 1, 1000 and 10000, one repetition (under three minutes).
    #[arg(long)]
    quick: bool,
    /// Numbers of services to measure at [default: 1,1000,10000,100000; quick: 1,1000,10000].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=catalogue::MAX_SERVICES as i64))]
    services: Vec<u32>,
    /// Datapaths to measure.
    #[arg(long, value_delimiter = ',', default_value = "direct,iptables,keel")]
    datapaths: Vec<DatapathKind>,
    /// Repetitions per datapath and scale; figures are medians [default: 3; quick: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20))]
    reps: Option<u32>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the chart here (python3 + matplotlib).
    #[arg(long, default_value = "bench-results/datapath.png")]
    chart: PathBuf,
    /// Don't draw the chart.
    #[arg(long)]
    no_chart: bool,
}

#[derive(Subcommand)]
enum Internal {
    /// Internal: HTTP requests to a target, one connection each (run inside the client pod).
    #[command(hide = true)]
    Probe {
        #[arg(long)]
        to: SocketAddrV4,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
    },
    /// Internal: the HTTP load generator (run inside the client pod).
    #[command(hide = true)]
    Load {
        /// Each new connection picks one of these at random.
        #[arg(long = "target", required = true)]
        targets: Vec<SocketAddrV4>,
        #[arg(long, default_value_t = 36, value_parser = clap::value_parser!(u32).range(1..=1000))]
        connections: u32,
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
        duration_s: u64,
        /// One request per connection (new-connection rate) instead of keep-alive.
        #[arg(long)]
        close: bool,
    },
}

fn plan(cli: &Cli) -> Result<Plan> {
    let mut datapaths = cli.datapaths.clone();
    datapaths.dedup();
    if datapaths.is_empty() {
        bail!("no datapath to measure");
    }
    let scales: Vec<usize> = if cli.services.is_empty() {
        if cli.quick {
            vec![1, 1000, 10_000]
        } else {
            vec![1, 1000, 10_000, 100_000]
        }
    } else {
        cli.services.iter().map(|&n| n as usize).collect()
    };
    let durations = if cli.quick {
        Durations {
            wrk: Duration::from_secs(2),
            iperf: Duration::from_secs(2),
            iperf_omit: Duration::from_secs(1),
        }
    } else {
        Durations {
            wrk: Duration::from_secs(3),
            iperf: Duration::from_secs(3),
            iperf_omit: Duration::from_secs(1),
        }
    };
    let reps = cli.reps.unwrap_or(if cli.quick { 1 } else { 3 });
    Ok(Plan {
        scales,
        reps,
        datapaths,
        durations,
    })
}

/// Ctrl-C (or SIGTERM/SIGHUP) sets the flag: waits give up, guards clean up, the run ends with
/// an error. A second signal exits at once (leftovers are swept by the next run).
fn cancel_on_signals() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, flag.clone())
            .context("installing a signal handler")?;
        signal_hook::flag::register(signal, flag.clone()).context("installing a signal handler")?;
    }
    Ok(flag)
}

fn bench(cli: &Cli) -> Result<bool> {
    let plan = plan(cli)?;
    let cancel = cancel_on_signals()?;
    let start = Instant::now();
    let outcome = harness::run(&plan, &cancel)?;
    eprintln!("done in {:.0} s", start.elapsed().as_secs_f64());
    print!("{}", report::table(&outcome.rows));
    if let Some(path) = &cli.json {
        report::write_json(&outcome.rows, path)?;
        eprintln!("wrote {}", path.display());
    }
    if !cli.no_chart {
        match report::draw_chart(&outcome.rows, &cli.chart) {
            Ok(()) => eprintln!("wrote {}", cli.chart.display()),
            Err(e) => {
                eprintln!("warning: {e:#}");
                return Ok(false);
            }
        }
    }
    if !outcome.failures.is_empty() {
        eprintln!("{} measurement(s) failed:", outcome.failures.len());
        for f in &outcome.failures {
            eprintln!("  {f}");
        }
        return Ok(false);
    }
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Internal::Probe { to, count }) => probe::run(to, count).map(|()| true),
        Some(Internal::Load {
            targets,
            connections,
            duration_s,
            close,
        }) => loadgen::run(loadgen::LoadArgs {
            targets,
            connections,
            duration: Duration::from_secs(duration_s),
            close,
        })
        .map(|()| true),
        None => bench(&cli),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("keel-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

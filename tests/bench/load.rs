//! The load generators, run inside the client pod's namespace and cgroup: wrk for the
//! new-connection and keep-alive request rates, iperf3 for single-stream throughput; and the
//! parsers of their reports.

use std::io::Write;
use std::net::SocketAddrV4;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use keel_tests::cgroup::Cgroup;
use keel_tests::process::{Limits, run_in};

/// How long each measurement runs.
#[derive(Debug, Clone, Copy)]
pub struct Durations {
    /// Each wrk run.
    pub wrk: Duration,
    /// Each iperf3 run, including the omitted warm-up.
    pub iperf: Duration,
    /// iperf3's omitted warm-up (`-O`), excluded from the figure.
    pub iperf_omit: Duration,
}

/// wrk's concurrency: one thread per backend, so the direct runs (thread i → backend i) keep
/// all three backends busy exactly like a Service spreading over them; with fewer threads than
/// backends, "direct" would run fewer server processes on the two cores than the datapaths
/// under test and measure scheduling, not the datapath. Enough connections to keep them busy.
const WRK_THREADS: u32 = 3;
const WRK_CONNECTIONS: u32 = 36;
/// Concurrent connections of Keel's load generator.
const LOAD_CONNECTIONS: u32 = 36;
/// Slack on top of a tool's own duration before it is considered hung.
const SLACK: Duration = Duration::from_secs(20);
/// Above this share of failed requests a wrk figure is flagged.
const MAX_ERROR_SHARE: f64 = 0.01;

/// Where the load generators run.
pub struct Client<'a> {
    pub netns: &'a str,
    pub cgroup: &'a Cgroup,
    pub durations: Durations,
    pub cancel: &'a AtomicBool,
}

/// A wrk report.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkReport {
    pub requests_per_s: f64,
    pub requests: u64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    pub errors: u64,
}

impl Client<'_> {
    fn limits(&self, duration: Duration) -> Limits<'_> {
        Limits::timeout(duration + SLACK).cancel_on(self.cancel)
    }

    /// Runs wrk against `targets`: one address, or several that wrk's threads take in turn
    /// (thread i connects to `targets[i % len]`; used to spread the direct runs over backends).
    fn wrk(&self, targets: &[SocketAddrV4], close: bool) -> Result<f64> {
        let first = *targets.first().context("no target")?;
        let mut cmd = Command::new("wrk");
        cmd.arg(format!("-t{WRK_THREADS}"))
            .arg(format!("-c{WRK_CONNECTIONS}"))
            .arg(format!("-d{}s", self.durations.wrk.as_secs().max(1)));
        if close {
            cmd.args(["-H", "Connection: close"]);
        }
        let script = if targets.len() > 1 {
            let mut file = tempfile::Builder::new()
                .prefix(&crate::backends::temp_prefix("wrk"))
                .suffix(".lua")
                .tempfile()
                .context("creating wrk's script")?;
            file.write_all(spread_script(targets).as_bytes())
                .context("writing wrk's script")?;
            cmd.arg("-s").arg(file.path());
            Some(file)
        } else {
            None
        };
        cmd.arg(format!("http://{first}/"));
        let out = run_in(
            self.netns,
            Some(self.cgroup),
            cmd,
            self.limits(self.durations.wrk),
        )?;
        drop(script);
        let report = parse_wrk(&String::from_utf8_lossy(&out.stdout))?;
        if report.requests == 0 {
            bail!(
                "wrk completed no request to {first} ({} errors)",
                report.errors
            );
        }
        let share = report.errors as f64 / (report.requests + report.errors) as f64;
        if share > MAX_ERROR_SHARE {
            eprintln!(
                "  warning: {} of {} requests to {first} failed",
                report.errors,
                report.requests + report.errors
            );
        }
        Ok(report.requests_per_s)
    }

    /// New connections per second: one request per TCP connection.
    pub fn connection_rate(&self, targets: &[SocketAddrV4]) -> Result<f64> {
        self.generate(targets, true).context("new-connection rate")
    }

    /// Requests per second over keep-alive connections.
    pub fn request_rate(&self, targets: &[SocketAddrV4]) -> Result<f64> {
        self.generate(targets, false)
            .context("keep-alive request rate")
    }

    /// Runs Keel's load generator (`keel-bench load`, see `loadgen`) in the client pod: each
    /// new connection goes to a random one of `targets`.
    fn generate(&self, targets: &[SocketAddrV4], close: bool) -> Result<f64> {
        let exe = std::env::current_exe().context("locating keel-bench")?;
        let mut cmd = Command::new(exe);
        cmd.arg("load")
            .args(["--connections", &LOAD_CONNECTIONS.to_string()]);
        cmd.args([
            "--duration-s",
            &self.durations.wrk.as_secs().max(1).to_string(),
        ]);
        for t in targets {
            cmd.args(["--target", &t.to_string()]);
        }
        if close {
            cmd.arg("--close");
        }
        let out = run_in(
            self.netns,
            Some(self.cgroup),
            cmd,
            self.limits(self.durations.wrk),
        )?;
        let (rate, requests, errors) =
            crate::loadgen::parse(&String::from_utf8_lossy(&out.stdout))?;
        if requests == 0 {
            bail!("no request completed ({errors} errors)");
        }
        let share = errors as f64 / (requests + errors) as f64;
        if share > MAX_ERROR_SHARE {
            eprintln!(
                "  warning: {errors} of {} requests failed",
                requests + errors
            );
        }
        Ok(rate)
    }

    /// The same figures from wrk (kept for comparison runs: `--load wrk`).
    #[allow(dead_code)]
    pub fn connection_rate_wrk(&self, targets: &[SocketAddrV4]) -> Result<f64> {
        self.wrk(targets, true).context("new-connection rate (wrk)")
    }

    /// Single-stream TCP throughput in Gbit/s.
    pub fn throughput(&self, target: SocketAddrV4) -> Result<f64> {
        let d = self.durations;
        let mut cmd = Command::new("iperf3");
        cmd.args([
            "-c",
            &target.ip().to_string(),
            "-p",
            &target.port().to_string(),
        ])
        .args(["-t", &d.iperf.as_secs().max(1).to_string()])
        .args(["-O", &d.iperf_omit.as_secs().to_string()])
        .args(["-P", "1", "-J", "--connect-timeout", "3000"]);
        let out = run_in(self.netns, Some(self.cgroup), cmd, self.limits(d.iperf))
            .context("iperf3 throughput")?;
        parse_iperf3(&String::from_utf8_lossy(&out.stdout)).context("iperf3 throughput")
    }
}

/// A wrk script giving each thread the next of `targets` (wrk's `setup(thread)` hook).
fn spread_script(targets: &[SocketAddrV4]) -> String {
    let list: Vec<String> = targets
        .iter()
        .map(|t| format!("{{\"{}\", \"{}\"}}", t.ip(), t.port()))
        .collect();
    format!(
        "local targets = {{{}}}
local n = 0
function setup(thread)
  local t = targets[n % #targets + 1]
  n = n + 1
  thread.addr = wrk.lookup(t[1], t[2])[1]
end
",
        list.join(", ")
    )
}

/// Parses wrk's text report (`Requests/sec:`, request count, errors).
pub fn parse_wrk(stdout: &str) -> Result<WrkReport> {
    let mut requests_per_s = None;
    let mut requests = None;
    let mut errors = 0u64;
    for line in stdout.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            requests_per_s = v.trim().parse::<f64>().ok();
        } else if let Some((count, _)) = line.split_once(" requests in ") {
            requests = count.trim().parse::<u64>().ok();
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "Socket errors: connect 0, read 12, write 0, timeout 0"
            errors += v
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    match (requests_per_s, requests) {
        (Some(requests_per_s), Some(requests)) => Ok(WrkReport {
            requests_per_s,
            requests,
            errors,
        }),
        _ => bail!("no `Requests/sec:` in wrk's output: {:?}", stdout.trim()),
    }
}

/// Parses iperf3's `-J` report into Gbit/s received.
pub fn parse_iperf3(json: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 printed invalid JSON")?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {err}");
    }
    let bps = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .context("no end.sum_received.bits_per_second in iperf3's report")?;
    Ok(bps / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 2s test @ http://10.244.0.11:80/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.71ms  510.62us  10.67ms   83.91%
    Req/Sec     9.41k   400.10     9.96k    80.00%
  37446 requests in 2.00s, 5.96MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:  18721.64
Transfer/sec:      2.98MB
";

    #[test]
    fn parses_wrk() {
        let r = parse_wrk(WRK).expect("valid report");
        assert_eq!(
            r,
            WrkReport {
                requests_per_s: 18721.64,
                requests: 37446,
                errors: 6
            }
        );
        assert!(parse_wrk("unable to connect to 10.96.0.1:80 Connection refused").is_err());
    }

    #[test]
    fn spreads_threads_over_targets() {
        let script = spread_script(&[
            "10.244.0.11:80".parse().unwrap(),
            "10.244.0.12:80".parse().unwrap(),
        ]);
        assert!(
            script.contains(r#"{"10.244.0.11", "80"}, {"10.244.0.12", "80"}"#),
            "{script}"
        );
    }

    #[test]
    fn parses_iperf3() {
        let ok = r#"{"start":{},"end":{"sum_received":{"bits_per_second":18.5e9}}}"#;
        assert!((parse_iperf3(ok).expect("valid") - 18.5).abs() < 1e-9);
        let err = r#"{"start":{},"error":"unable to connect to server: Connection refused"}"#;
        assert!(
            parse_iperf3(err)
                .unwrap_err()
                .to_string()
                .contains("Connection refused")
        );
        assert!(parse_iperf3("").is_err());
    }
}

//! Results: one row per (services, datapath), printed as a table with ratios to direct, written
//! as JSON, and drawn as a PNG chart (python3 + matplotlib).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// A datapath under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatapathKind {
    /// The backend's pod IP, no Service in the way: the limit.
    Direct,
    /// kube-proxy-shaped iptables rules (iptables-nft).
    Iptables,
    /// Keel's eBPF datapath.
    Keel,
}

impl DatapathKind {
    pub fn name(self) -> &'static str {
        match self {
            DatapathKind::Direct => "direct",
            DatapathKind::Iptables => "iptables",
            DatapathKind::Keel => "keel",
        }
    }
}

/// The medians of one datapath at one scale (`None`: not applicable or every run failed).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub datapath: DatapathKind,
    pub services: usize,
    pub conn_per_s: Option<f64>,
    pub rr_per_s: Option<f64>,
    pub gbit_per_s: Option<f64>,
    pub program_s: Option<f64>,
}

/// Samples of one datapath at one scale, one per repetition (failed runs are absent).
#[derive(Debug, Default, Clone)]
pub struct Samples {
    pub conn_per_s: Vec<f64>,
    pub rr_per_s: Vec<f64>,
    pub gbit_per_s: Vec<f64>,
    pub program_s: Vec<f64>,
}

impl Samples {
    pub fn row(&self, datapath: DatapathKind, services: usize) -> Row {
        Row {
            datapath,
            services,
            conn_per_s: median(&self.conn_per_s),
            rr_per_s: median(&self.rr_per_s),
            gbit_per_s: median(&self.gbit_per_s),
            program_s: median(&self.program_s),
        }
    }
}

/// The median (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

fn ratio(value: Option<f64>, reference: Option<f64>) -> String {
    match (value, reference) {
        (Some(v), Some(r)) if r > 0.0 => format!("{:.2}", v / r),
        _ => "-".into(),
    }
}

/// The results as a text table, with each figure's ratio to direct at the same scale.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>8}  {:<9}{:>10} {:>6}{:>11} {:>6}{:>8} {:>6}{:>11}",
        "services", "datapath", "conn/s", "ratio", "req/s", "ratio", "Gbit/s", "ratio", "program_s"
    );
    for row in rows {
        let direct = rows
            .iter()
            .find(|r| r.services == row.services && r.datapath == DatapathKind::Direct);
        let reference = |f: fn(&Row) -> Option<f64>| direct.and_then(f);
        let _ = writeln!(
            out,
            "{:>8}  {:<9}{:>10} {:>6}{:>11} {:>6}{:>8} {:>6}{:>11}",
            row.services,
            row.datapath.name(),
            cell(row.conn_per_s, 0),
            ratio(row.conn_per_s, reference(|r| r.conn_per_s)),
            cell(row.rr_per_s, 0),
            ratio(row.rr_per_s, reference(|r| r.rr_per_s)),
            cell(row.gbit_per_s, 2),
            ratio(row.gbit_per_s, reference(|r| r.gbit_per_s)),
            cell(row.program_s, 4),
        );
    }
    out
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Writes the rows as a JSON list.
pub fn write_json(rows: &[Row], path: &Path) -> Result<()> {
    create_parent(path)?;
    let json = serde_json::to_string_pretty(rows).context("serializing results")?;
    std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Python interpreters to try: Debian's first (python3-matplotlib lives there, while a
/// `python3` earlier on PATH, e.g. pyenv's, may lack it).
const PYTHONS: [&str; 2] = ["/usr/bin/python3", "python3"];
const CHART_SCRIPT: &str = include_str!("chart.py");

/// Draws the chart with python3 + matplotlib (Debian: python3-matplotlib).
pub fn draw_chart(rows: &[Row], path: &Path) -> Result<()> {
    create_parent(path)?;
    let data = tempfile::NamedTempFile::new().context("creating a temporary file")?;
    write_json(rows, data.path())?;
    let mut last_error = String::new();
    for python in PYTHONS {
        let mut cmd = Command::new(python);
        cmd.arg("-c").arg(CHART_SCRIPT).arg(data.path()).arg(path);
        let mut child = match keel_tests::process::spawn(cmd) {
            Ok(child) => child,
            Err(e) => {
                last_error = format!("{e:#}");
                continue;
            }
        };
        let limits = keel_tests::process::Limits::timeout(Duration::from_secs(120));
        let status = child.wait(limits)?;
        if status.success() {
            return Ok(());
        }
        last_error = format!("{python} exited with {status}");
    }
    bail!("drawing the chart failed (is python3-matplotlib installed?): {last_error}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn table_has_ratios_to_direct() {
        let row = |datapath, conn| Row {
            datapath,
            services: 1000,
            conn_per_s: Some(conn),
            rr_per_s: None,
            gbit_per_s: Some(10.0),
            program_s: None,
        };
        let text = table(&[
            row(DatapathKind::Direct, 20000.0),
            row(DatapathKind::Iptables, 10000.0),
        ]);
        let iptables = text.lines().nth(2).expect("three lines");
        assert!(
            iptables.contains("10000") && iptables.contains("0.50"),
            "{iptables}"
        );
        let json = serde_json::to_string(&row(DatapathKind::Keel, 1.0)).expect("serializable");
        assert!(json.contains(r#""datapath":"keel""#) && json.contains(r#""rr_per_s":null"#));
    }
}

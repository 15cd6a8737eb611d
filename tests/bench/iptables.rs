//! The iptables datapath as kube-proxy (iptables mode) programs it: a generator of the nat
//! table in `iptables-restore` format, and a guard that loads it into the node namespace (timed,
//! one `iptables-restore` like kube-proxy's full sync) and removes the table again.
//!
//! Chain layout (kube-proxy `pkg/proxy/iptables`): PREROUTING and OUTPUT jump to KUBE-SERVICES,
//! which has one rule per service port and finally jumps to KUBE-NODEPORTS for local
//! destinations; KUBE-SVC-<hash> marks off-cluster sources for masquerade, then (with
//! `sessionAffinity: ClientIP`) sends clients that `recent` remembers to their endpoint, then
//! picks an endpoint with `statistic --mode random --probability 1/k`; KUBE-SEP-<hash> marks
//! hairpin traffic and DNATs; KUBE-POSTROUTING masquerades packets carrying mark 0x4000. Like
//! kube-proxy past 1000 endpoints ("large cluster mode"), per-endpoint rules carry no comments.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use data_encoding::BASE32;
use keel_tests::process::{Limits, run_in, spawn_in};
use sha2::{Digest, Sha256};

use crate::catalogue::{Catalogue, ServiceSpec};

/// kube-proxy's `largeClusterEndpointsThreshold`.
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;
/// kube-proxy's masquerade mark (`--iptables-masquerade-bit` 14).
const MASQ_MARK: &str = "0x4000";
/// Default `sessionAffinityConfig.clientIP.timeoutSeconds`.
const AFFINITY_TIMEOUT_S: u32 = 10800;
/// Longest a table load may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// kube-proxy's chain-name hash: base32(sha256(input))[:16].
fn chain_hash(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    BASE32.encode(&digest)[..16].to_string()
}

fn svc_chain(svc: &ServiceSpec) -> String {
    format!("KUBE-SVC-{}", chain_hash(&format!("{}tcp", svc.port_id())))
}

fn sep_chain(svc: &ServiceSpec, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        chain_hash(&format!("{}tcp{endpoint}", svc.port_id()))
    )
}

/// The nat table for `catalogue` in `iptables-restore` format; `cluster_cidr` is kube-proxy's
/// `--cluster-cidr` (sources outside it are masqueraded).
pub fn ruleset(catalogue: &Catalogue, cluster_cidr: &str) -> String {
    let services = catalogue.services();
    let endpoints: usize = services.iter().map(|s| s.endpoints.len()).sum();
    let large = endpoints > LARGE_CLUSTER_ENDPOINTS;
    let comment = |text: &str| {
        if large {
            String::new()
        } else {
            format!(" -m comment --comment \"{text}\"")
        }
    };

    let mut chains = String::new();
    let mut rules = String::new();
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        // Writing to a String cannot fail.
        let _ = writeln!(chains, ":{chain} - [0:0]");
    }
    rules.push_str(concat!(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
    ));
    let _ = writeln!(rules, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    rules.push_str(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );

    let mut per_service = String::new();
    for svc in services {
        let id = svc.port_id();
        let svc_chain = svc_chain(svc);
        let (vip, port) = (svc.vip, svc.port);
        let _ = writeln!(chains, ":{svc_chain} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"{id} cluster IP\" -m tcp --dport {port} -j {svc_chain}"
        );
        let _ = writeln!(
            per_service,
            "-A {svc_chain} ! -s {cluster_cidr} -d {vip}/32 -p tcp -m comment --comment \"{id} cluster IP\" -m tcp --dport {port} -j KUBE-MARK-MASQ"
        );
        let eps: Vec<(String, String)> = svc
            .endpoints
            .iter()
            .map(|ip| {
                let ep = format!("{ip}:{port}");
                (sep_chain(svc, &ep), ep)
            })
            .collect();
        if svc.affinity {
            for (sep, ep) in &eps {
                let _ = writeln!(
                    per_service,
                    "-A {svc_chain}{} -m recent --name {sep} --mask 255.255.255.255 --rsource --rcheck --seconds {AFFINITY_TIMEOUT_S} --reap -j {sep}",
                    comment(&format!("{id} -> {ep}"))
                );
            }
        }
        let k = eps.len();
        for (i, (sep, ep)) in eps.iter().enumerate() {
            let statistic = if i + 1 < k {
                format!(
                    " -m statistic --mode random --probability {:.10}",
                    1.0 / (k - i) as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                per_service,
                "-A {svc_chain}{}{statistic} -j {sep}",
                comment(&format!("{id} -> {ep}"))
            );
        }
        for (sep, ep) in &eps {
            let ip = ep.split(':').next().unwrap_or_default();
            let recent = if svc.affinity {
                format!(" -m recent --name {sep} --mask 255.255.255.255 --rsource --set")
            } else {
                String::new()
            };
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let _ = writeln!(
                per_service,
                "-A {sep} -s {ip}/32{} -j KUBE-MARK-MASQ",
                comment(&id)
            );
            let _ = writeln!(
                per_service,
                "-A {sep} -p tcp{}{recent} -m tcp -j DNAT --to-destination {ep}",
                comment(&id)
            );
        }
    }
    rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    format!("*nat\n{chains}{rules}{per_service}COMMIT\n")
}

/// The nat table loaded into a namespace; removed (table deleted, so conntrack and NAT hooks
/// go too) when dropped.
pub struct LoadedTable<'a> {
    ns: &'a str,
}

impl<'a> LoadedTable<'a> {
    /// Loads `rules` with one `iptables-restore` in `ns`; returns the guard and the wall time of
    /// the load (process start to exit, as kube-proxy's sync experiences it).
    ///
    /// kube-proxy passes `--noflush`, but iptables-nft 1.8.9 handles it in time quadratic in the
    /// number of chains (17 s instead of 1.1 s for 4000 services here); the namespace's nat
    /// table is ours alone, so flushing it as part of the restore loads the same rules.
    pub fn load(
        ns: &'a str,
        rules: &str,
        limits: Limits<'_>,
    ) -> Result<(LoadedTable<'a>, Duration)> {
        let mut cmd = Command::new("iptables-restore");
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut proc = spawn_in(ns, None, cmd)?;
        // From here on the table may exist (partly): the guard removes it on every path.
        let table = LoadedTable { ns };
        let stdin = proc
            .take_stdin()
            .context("iptables-restore stdin is not piped")?;
        // Feed the ruleset from a helper thread so the wait below stays bounded; if the wait
        // kills iptables-restore, the writer fails with a broken pipe and ends.
        let (write, out) = std::thread::scope(|s| {
            let writer = s.spawn(move || {
                let mut stdin = stdin;
                stdin.write_all(rules.as_bytes())
            });
            let out = proc.wait_with_output(Limits {
                timeout: LOAD_TIMEOUT.min(limits.timeout),
                ..limits
            });
            (writer.join(), out)
        });
        let out = out?;
        let elapsed = start.elapsed();
        if !out.status.success() {
            bail!(
                "iptables-restore failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        match write {
            Ok(result) => result.context("writing the ruleset to iptables-restore")?,
            Err(_) => bail!("the thread writing the ruleset panicked"),
        }
        Ok((table, elapsed))
    }
}

impl Drop for LoadedTable<'_> {
    fn drop(&mut self) {
        if let Err(e) = delete_nat_table(self.ns) {
            eprintln!("warning: cleanup: {e:#}");
        }
    }
}

/// Deletes the nat table (iptables-nft keeps empty base chains after a flush, which would keep
/// conntrack running for the other datapaths' runs).
fn delete_nat_table(ns: &str) -> Result<()> {
    let limits = Limits::timeout(Duration::from_secs(120));
    let mut nft = Command::new("nft");
    nft.args(["delete", "table", "ip", "nat"]);
    run_in(ns, None, nft, limits).map(drop).or_else(|e| {
        // Without the nft tool, at least empty the table.
        let mut flush = Command::new("iptables");
        flush.args(["-t", "nat", "-F"]);
        run_in(ns, None, flush, limits).with_context(|| format!("after: {e:#}"))?;
        let mut delete = Command::new("iptables");
        delete.args(["-t", "nat", "-X"]);
        run_in(ns, None, delete, limits).map(drop)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn catalogue(scale: usize) -> Catalogue {
        let backends: Vec<_> = (11..14).map(|i| Ipv4Addr::new(10, 244, 0, i)).collect();
        Catalogue::new(scale, &backends).expect("valid scale")
    }

    #[test]
    fn matches_kube_proxy_chain_names() {
        // kube-proxy: servicePortChainName("ns1/svc1:p80", "tcp")
        assert_eq!(chain_hash("ns1/svc1:p80tcp"), "XPGD46QRK7WJZT7O");
        // kube-proxy: servicePortEndpointChainName("ns1/svc1:p80", "tcp", "10.180.0.1:80")
        assert_eq!(
            chain_hash("ns1/svc1:p80tcp10.180.0.1:80"),
            "SXIVWICOYRO3J4NJ"
        );
    }

    #[test]
    fn walks_every_service_then_nodeports() {
        let rules = ruleset(&catalogue(3), "10.244.0.0/16");
        let services: Vec<&str> = rules
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .collect();
        assert_eq!(services.len(), 5);
        assert!(services[2].contains("target-iperf"));
        assert!(services[3].contains("target-http"));
        assert!(services[4].contains("-j KUBE-NODEPORTS"));
        assert!(rules.contains("--probability 0.3333333333"));
        assert!(rules.contains("--probability 0.5000000000"));
        assert!(rules.contains("--rcheck --seconds 10800 --reap"));
        assert!(rules.contains("--to-destination 10.244.0.13:5201"));
        assert!(rules.starts_with("*nat\n") && rules.ends_with("COMMIT\n"));
        // Every jump target is declared.
        for target in rules.lines().filter_map(|l| l.split(" -j ").nth(1)) {
            let chain = target.split_whitespace().next().unwrap_or_default();
            if chain.starts_with("KUBE-") {
                assert!(
                    rules.contains(&format!(":{chain} - [0:0]")),
                    "{chain} undeclared"
                );
            }
        }
    }

    #[test]
    fn large_tables_drop_endpoint_comments() {
        let rules = ruleset(&catalogue(400), "10.244.0.0/16");
        assert!(!rules.contains("->"));
        assert!(rules.contains("cluster IP"));
    }
}

//! Network namespaces: a routed pod/node/outside topology for datapath tests and benchmarks, and
//! a way to run code with the calling thread inside a namespace.
//!
//! The topology mirrors a routed CNI (Calico, Cilium): every pod namespace has a /32 address on
//! its `eth0`, a link-scope route to the gateway `10.244.0.1` and a default route through it; the
//! node namespace holds the host side of each pod's veth (each carrying the gateway address) with
//! a /32 route per pod, forwards IPv4 and has reverse-path filtering off. An optional "outside"
//! namespace plays an external client of the node (`192.168.50.2` → node `192.168.50.1`).
//!
//! Veths are created directly inside their namespaces, so interface names only need to be unique
//! per namespace and deleting the namespaces removes everything.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{is_stale_name, unique_name};

/// Gateway address of every pod (carried by each host-side veth in the node namespace).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The pod network, as kube-proxy's `--cluster-cidr` would name it.
pub const POD_CIDR: &str = "10.244.0.0/16";
/// The node's address on its external link (present when the topology has an outside namespace).
pub const NODE_EXTERNAL_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
/// The outside client's address.
pub const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
/// Prefix length of the external link.
pub const EXTERNAL_PREFIX_LEN: u8 = 24;
/// The node's external device (in the node namespace).
pub const NODE_EXTERNAL_DEVICE: &str = "ext0";
/// Name of the interface inside pod and outside namespaces.
pub const POD_DEVICE: &str = "eth0";
/// At most this many pods (addresses 10.244.0.10 ..= 10.244.0.209).
pub const MAX_PODS: usize = 200;

/// Path of a named network namespace (as made by `ip netns add`).
pub fn netns_path(name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') {
        bail!("invalid network namespace name {name:?}");
    }
    for dir in ["/run/netns", "/var/run/netns"] {
        let path = PathBuf::from(dir).join(name);
        if path.exists() {
            return Ok(path);
        }
    }
    bail!("network namespace {name:?} not found under /run/netns or /var/run/netns")
}

/// Opens a named network namespace (the fd to pass to `setns`).
pub(crate) fn open_netns(name: &str) -> Result<File> {
    let path = netns_path(name)?;
    File::open(&path).with_context(|| format!("opening {}", path.display()))
}

fn setns_net(fd: &File) -> std::io::Result<()> {
    // SAFETY: `fd` is an open namespace file for the duration of the call; setns only changes
    // the calling thread's network namespace.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Puts the calling thread back into its original network namespace when dropped.
struct RestoreNetns(File);

impl Drop for RestoreNetns {
    fn drop(&mut self) {
        if let Err(e) = setns_net(&self.0) {
            // Continuing would run the rest of the program in the wrong namespace.
            eprintln!("FATAL: cannot return to the original network namespace: {e}");
            std::process::abort();
        }
    }
}

/// Runs `f` with the calling thread inside network namespace `ns`, then moves the thread back
/// (also when `f` panics). Sockets, netlink and interface-name lookups made by `f` happen in `ns`.
/// Other threads and child processes spawned by `f` are not affected.
pub fn run_in_netns<T>(ns: &str, f: impl FnOnce() -> T) -> Result<T> {
    let target = open_netns(ns)?;
    let original =
        File::open("/proc/thread-self/ns/net").context("opening the current network namespace")?;
    setns_net(&target).with_context(|| format!("entering network namespace {ns}"))?;
    let _restore = RestoreNetns(original);
    Ok(f())
}

/// Sets a sysctl (dotted key, e.g. `net.ipv4.ip_forward`) inside network namespace `ns`.
pub fn set_sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    if key.is_empty() || key.contains("..") || key.contains('/') {
        bail!("invalid sysctl key {key:?}");
    }
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    run_in_netns(ns, || std::fs::write(&path, value))?
        .with_context(|| format!("setting {key}={value} in network namespace {ns}"))
}

/// Runs `ip <args>`, failing with its stderr.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` with its loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        if name.is_empty() || name.contains('/') || name.len() > 200 {
            bail!("invalid network namespace name {name:?}");
        }
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!("warning: cleanup: {e:#}");
        }
    }
}

/// Deletes namespaces left behind by killed runs (named `keel-<pid>-…` with `<pid>` gone).
/// Returns how many were deleted.
pub fn sweep_stale() -> usize {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return 0;
    };
    let mut deleted = 0;
    for entry in entries.flatten().take(10_000) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_stale_name(&name) && ip(&["netns", "delete", &name]).is_ok() {
            deleted += 1;
        }
    }
    deleted
}

/// A pod: its namespace, address and the host side of its veth (in the node namespace).
#[derive(Debug)]
pub struct Pod {
    netns: Netns,
    ip: Ipv4Addr,
    host_veth: String,
}

impl Pod {
    pub fn netns(&self) -> &str {
        self.netns.name()
    }
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
    /// Host-side veth name, in the node namespace (where tc programs attach).
    pub fn host_veth(&self) -> &str {
        &self.host_veth
    }
}

/// Builder for [`Topology`].
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    pods: usize,
    outside: bool,
}

impl TopologyBuilder {
    /// Number of pod namespaces (default 2).
    pub fn pods(mut self, n: usize) -> Self {
        self.pods = n;
        self
    }

    /// Whether to add an outside namespace linked to the node's external device (default no).
    pub fn outside(mut self, yes: bool) -> Self {
        self.outside = yes;
        self
    }

    pub fn build(self) -> Result<Topology> {
        if self.pods > MAX_PODS {
            bail!("at most {MAX_PODS} pods, asked for {}", self.pods);
        }
        let tag = unique_name();
        // Locals own each namespace as soon as it exists, so an error part-way cleans up.
        let node = Netns::create(&format!("{tag}-node"))?;
        let node_ns = node.name().to_string();
        for key in ["net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding"] {
            set_sysctl(&node_ns, key, "1")?;
        }
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.default.rp_filter",
        ] {
            set_sysctl(&node_ns, key, "0")?;
        }

        let mut pods = Vec::with_capacity(self.pods);
        for i in 0..self.pods {
            pods.push(add_pod(&node_ns, &tag, i)?);
        }
        let outside = if self.outside {
            Some(add_outside(&node_ns, &tag)?)
        } else {
            None
        };
        Ok(Topology {
            pods,
            outside,
            node,
            tag,
        })
    }
}

fn add_pod(node_ns: &str, tag: &str, i: usize) -> Result<Pod> {
    let netns = Netns::create(&format!("{tag}-pod{i}"))?;
    let pod_ns = netns.name().to_string();
    let last_octet = u8::try_from(10 + i).context("pod index out of range")?;
    let ip_addr = Ipv4Addr::new(10, 244, 0, last_octet);
    let host_veth = format!("veth-pod{i}");
    let gw = POD_GATEWAY.to_string();
    let pod_cidr = format!("{ip_addr}/32");
    let gw_cidr = format!("{gw}/32");
    ip(&[
        "-n", node_ns, "link", "add", &host_veth, "type", "veth", "peer", "name", POD_DEVICE,
        "netns", &pod_ns,
    ])?;
    set_sysctl(
        node_ns,
        &format!("net.ipv4.conf.{host_veth}.rp_filter"),
        "0",
    )?;
    ip(&["-n", node_ns, "addr", "add", &gw_cidr, "dev", &host_veth])?;
    ip(&["-n", node_ns, "link", "set", &host_veth, "up"])?;
    ip(&["-n", &pod_ns, "addr", "add", &pod_cidr, "dev", POD_DEVICE])?;
    ip(&["-n", &pod_ns, "link", "set", POD_DEVICE, "up"])?;
    ip(&[
        "-n", &pod_ns, "route", "add", &gw, "dev", POD_DEVICE, "scope", "link",
    ])?;
    ip(&[
        "-n", &pod_ns, "route", "add", "default", "via", &gw, "dev", POD_DEVICE,
    ])?;
    ip(&[
        "-n", node_ns, "route", "add", &pod_cidr, "dev", &host_veth, "scope", "link",
    ])?;
    Ok(Pod {
        netns,
        ip: ip_addr,
        host_veth,
    })
}

fn add_outside(node_ns: &str, tag: &str) -> Result<Netns> {
    let netns = Netns::create(&format!("{tag}-out"))?;
    let out_ns = netns.name().to_string();
    let node_cidr = format!("{NODE_EXTERNAL_ADDR}/{EXTERNAL_PREFIX_LEN}");
    let out_cidr = format!("{OUTSIDE_ADDR}/{EXTERNAL_PREFIX_LEN}");
    let gw = NODE_EXTERNAL_ADDR.to_string();
    ip(&[
        "-n",
        node_ns,
        "link",
        "add",
        NODE_EXTERNAL_DEVICE,
        "type",
        "veth",
        "peer",
        "name",
        POD_DEVICE,
        "netns",
        &out_ns,
    ])?;
    set_sysctl(
        node_ns,
        &format!("net.ipv4.conf.{NODE_EXTERNAL_DEVICE}.rp_filter"),
        "0",
    )?;
    ip(&[
        "-n",
        node_ns,
        "addr",
        "add",
        &node_cidr,
        "dev",
        NODE_EXTERNAL_DEVICE,
    ])?;
    ip(&["-n", node_ns, "link", "set", NODE_EXTERNAL_DEVICE, "up"])?;
    ip(&["-n", &out_ns, "addr", "add", &out_cidr, "dev", POD_DEVICE])?;
    ip(&["-n", &out_ns, "link", "set", POD_DEVICE, "up"])?;
    ip(&[
        "-n", &out_ns, "route", "add", "default", "via", &gw, "dev", POD_DEVICE,
    ])?;
    Ok(netns)
}

/// A node namespace with pods (and optionally an outside client), removed on drop.
///
/// ```no_run
/// # fn t() -> anyhow::Result<()> {
/// use keel_tests::netns::{Topology, run_in_netns};
/// let topo = Topology::builder().pods(3).outside(true).build()?;
/// let backend = topo.pod(1).ip();
/// run_in_netns(topo.node_netns(), || { /* attach tc programs to topo.pod(0).host_veth() */ })?;
/// # let _ = backend; Ok(()) }
/// ```
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order: pods and outside go before the node.
    pods: Vec<Pod>,
    outside: Option<Netns>,
    node: Netns,
    tag: String,
}

impl Topology {
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder {
            pods: 2,
            outside: false,
        }
    }

    /// The unique prefix of this topology's namespace names (`keel-<pid>-<n>`).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn node_netns(&self) -> &str {
        self.node.name()
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Pod `i`. Panics if `i` is out of range (a bug in the calling test).
    pub fn pod(&self, i: usize) -> &Pod {
        &self.pods[i]
    }

    pub fn pod_ips(&self) -> Vec<Ipv4Addr> {
        self.pods.iter().map(Pod::ip).collect()
    }

    pub fn host_veths(&self) -> Vec<&str> {
        self.pods.iter().map(Pod::host_veth).collect()
    }

    /// The outside namespace, when built with `.outside(true)`.
    pub fn outside_netns(&self) -> Option<&str> {
        self.outside.as_ref().map(Netns::name)
    }

    /// The node's external device (in the node namespace), when there is an outside namespace.
    pub fn node_external_device(&self) -> Option<&str> {
        self.outside.as_ref().map(|_| NODE_EXTERNAL_DEVICE)
    }

    /// The node's address on its external link, when there is an outside namespace.
    pub fn node_external_addr(&self) -> Option<Ipv4Addr> {
        self.outside.as_ref().map(|_| NODE_EXTERNAL_ADDR)
    }

    /// The outside client's address, when there is an outside namespace.
    pub fn outside_addr(&self) -> Option<Ipv4Addr> {
        self.outside.as_ref().map(|_| OUTSIDE_ADDR)
    }
}

//! The eBPF Service datapath, user-space side: load the programs, pin maps and links, attach to
//! cgroups and devices, and program Services + EndpointSlices into the maps.
//!
//! - [`translate`]: Services + EndpointSlices → desired frontends (pure, golden-tested).
//! - [`state`]: the mirror of the maps and the planner of incremental writes (pure).
//! - this module: the thin kernel layer that loads, attaches and applies a plan.
//! - [`sys`]: raw `bpf(2)` calls aya does not expose (link update, pinned-object open).
//!
//! Everything is pinned under a directory on bpffs (`/sys/fs/bpf/keel` by default). A restarted
//! agent finds the pinned maps, rebuilds its mirror from them, and atomically swaps its freshly
//! loaded programs into the pinned links: forwarding never stops and state is kept.
pub mod state;
pub mod sys;
pub mod translate;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap, HashSet},
    fs,
    net::Ipv4Addr,
    os::{fd::AsFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, IterableMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap},
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError, SchedClassifier, TcAttachType, TestRun,
        TestRunOptions, links::FdLink,
    },
};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use keel_common::{
    AffinityKey, AffinityValue, Backend, BackendAddr, CtEntry, CtKey, DropReason, Retired, RevNat,
    ServiceCounters, ServiceKey, ServiceValue, map_names, program_names,
};
use tracing::{debug, info, warn};

use self::{
    state::{MapOp, MapState},
    translate::{NodeContext, translate},
};

/// The eBPF object built by `cargo xtask build-ebpf` (empty if it was not built).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/keel-datapath.o"));

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/keel";

/// Errors of the datapath's kernel layer.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The agent was built without the eBPF object.
    #[error(
        "the eBPF object is not built into this binary: run `cargo xtask build-ebpf`, then rebuild"
    )]
    NotBuilt,
    /// bpffs missing and could not be mounted, or the pin directory is unusable.
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The object failed to load (verifier, map creation, incompatible pinned map).
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program is missing from the object or failed to load or attach.
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    /// A map is missing from the object or has an unexpected type.
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    /// Attaching or pinning a link failed.
    #[error("attaching {what}: {detail}")]
    Attach { what: String, detail: String },
    /// A map write failed.
    #[error("writing {map}: {source}")]
    Write { map: &'static str, source: MapError },
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// How to load the datapath.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// Directory on bpffs holding the pinned maps and links.
    pub pin_dir: PathBuf,
    /// This node's name (for `Local` traffic policies).
    pub node_name: String,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            node_name: String::new(),
        }
    }
}

/// What one [`Datapath::sync`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Frontends programmed after the sync.
    pub frontends: usize,
    /// Backends in the backend map after the sync.
    pub backends: usize,
    /// Single map entries written or deleted.
    pub writes: usize,
    /// Things translation skipped (logged too).
    pub warnings: Vec<String>,
}

/// Counters read back from the maps (summed over CPUs).
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub drops: BTreeMap<&'static str, u64>,
    /// By frontend (as `Frontend` display strings).
    pub services: BTreeMap<String, ServiceCounters>,
}

/// The tc programs, for packet tests.
#[derive(Clone, Copy, Debug)]
pub enum TcProgram {
    FromPod,
    FromNetdev,
}

impl TcProgram {
    fn name(self) -> &'static str {
        match self {
            TcProgram::FromPod => program_names::FROM_POD,
            TcProgram::FromNetdev => program_names::FROM_NETDEV,
        }
    }
}

struct Maps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    rev_nat: HashMap<MapData, u32, RevNat>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    retired: HashMap<MapData, BackendAddr, Retired>,
    node_addrs: HashMap<MapData, u32, u32>,
    conntrack: HashMap<MapData, CtKey, CtEntry>,
    drops: PerCpuArray<MapData, u64>,
    counters: PerCpuHashMap<MapData, u32, ServiceCounters>,
}

fn take<T: TryFrom<Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T> {
    let map = ebpf.take_map(name).ok_or(DatapathError::Map {
        name,
        source: MapError::InvalidName { name: name.into() },
    })?;
    T::try_from(map).map_err(|source| DatapathError::Map { name, source })
}

const SOCK_PROGRAMS: [&str; 4] = [
    program_names::CONNECT4,
    program_names::SENDMSG4,
    program_names::RECVMSG4,
    program_names::GETPEERNAME4,
];

/// The loaded datapath.
pub struct Datapath {
    ebpf: Ebpf,
    maps: Maps,
    pin_dir: PathBuf,
    node: NodeContext,
    state: MapState,
    node_addrs: BTreeSet<Ipv4Addr>,
    took_over: bool,
    /// The tc pins of the devices attached through this instance, by (netns inode, ifname):
    /// a device that is gone (a deleted pod veth) can't be looked up to find its pin.
    tc_pins: StdHashMap<(u64, String), PathBuf>,
}

impl Datapath {
    /// Loads the embedded eBPF object, reusing maps pinned in `cfg.pin_dir` by a previous run
    /// (and rebuilding the mirror from them), mounting bpffs first if it is missing.
    pub fn load(cfg: DatapathConfig) -> Result<Datapath> {
        if OBJECT.is_empty() {
            return Err(DatapathError::NotBuilt);
        }
        let pin_err = |source| DatapathError::PinDir {
            path: cfg.pin_dir.clone(),
            source,
        };
        sys::ensure_bpffs(&cfg.pin_dir).map_err(pin_err)?;
        fs::create_dir_all(cfg.pin_dir.join("links")).map_err(pin_err)?;
        let took_over = cfg.pin_dir.join(map_names::SERVICES).exists();

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&cfg.pin_dir)
            .load(OBJECT)?;
        for name in SOCK_PROGRAMS {
            let prog: &mut CgroupSockAddr = program_mut(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        for name in [program_names::FROM_POD, program_names::FROM_NETDEV] {
            let prog: &mut SchedClassifier = program_mut(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        let maps = Maps {
            services: take(&mut ebpf, map_names::SERVICES)?,
            backends: take(&mut ebpf, map_names::BACKENDS)?,
            rev_nat: take(&mut ebpf, map_names::REV_NAT)?,
            affinity: take(&mut ebpf, map_names::AFFINITY)?,
            retired: take(&mut ebpf, map_names::RETIRED_BACKENDS)?,
            node_addrs: take(&mut ebpf, map_names::NODE_ADDRS)?,
            conntrack: take(&mut ebpf, map_names::CONNTRACK)?,
            drops: take(&mut ebpf, map_names::DROPS)?,
            counters: take(&mut ebpf, map_names::SERVICE_COUNTERS)?,
        };
        let mut dp = Datapath {
            ebpf,
            maps,
            pin_dir: cfg.pin_dir,
            node: NodeContext {
                node_name: cfg.node_name,
            },
            state: MapState::default(),
            node_addrs: BTreeSet::new(),
            took_over,
            tc_pins: StdHashMap::new(),
        };
        if took_over {
            dp.rebuild_mirror();
            info!(
                pin_dir = %dp.pin_dir.display(),
                frontends = dp.state.frontends().len(),
                "took over pinned datapath state"
            );
        }
        Ok(dp)
    }

    /// Whether [`Datapath::load`] found and reused state pinned by a previous run.
    pub fn took_over(&self) -> bool {
        self.took_over
    }

    /// The mirror of what is programmed.
    pub fn state(&self) -> &MapState {
        &self.state
    }

    fn rebuild_mirror(&mut self) {
        let services: Vec<_> = self.maps.services.iter().filter_map(|r| r.ok()).collect();
        let backends: Vec<_> = self.maps.backends.iter().filter_map(|r| r.ok()).collect();
        self.state = MapState::from_entries(services, backends);
        self.node_addrs = self
            .maps
            .node_addrs
            .keys()
            .filter_map(|k| k.ok())
            .map(|a| Ipv4Addr::from(a.to_ne_bytes()))
            .collect();
    }

    /// Attaches the socket-level programs to the cgroup v2 directory `cgroup_dir`, so every
    /// process in that subtree gets socket-level load balancing. Idempotent; after a restart
    /// the pinned links are switched to the newly loaded programs atomically.
    pub fn attach_cgroup(&mut self, cgroup_dir: &Path) -> Result<()> {
        let what = |name: &str| format!("{name} to cgroup {}", cgroup_dir.display());
        let meta = fs::metadata(cgroup_dir).map_err(|e| DatapathError::Attach {
            what: what("socket programs"),
            detail: e.to_string(),
        })?;
        for name in SOCK_PROGRAMS {
            let pin = self
                .pin_dir
                .join("links")
                .join(format!("cg-{}-{name}", meta.ino()));
            if self.replace_pinned(&pin, name)? {
                continue;
            }
            let cgroup = fs::File::open(cgroup_dir).map_err(|e| DatapathError::Attach {
                what: what(name),
                detail: e.to_string(),
            })?;
            let prog: &mut CgroupSockAddr = program_mut(&mut self.ebpf, name)?;
            let id = prog
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|e| DatapathError::Attach {
                    what: what(name),
                    detail: e.to_string(),
                })?;
            let link = prog
                .take_link(id)
                .map_err(|source| DatapathError::Program { name, source })?;
            let fd: FdLink = link
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| DatapathError::Attach {
                    what: what(name),
                    detail: e.to_string(),
                })?;
            fd.pin(&pin).map_err(|e| DatapathError::Attach {
                what: what(name),
                detail: e.to_string(),
            })?;
            debug!(program = name, cgroup = %cgroup_dir.display(), "attached");
        }
        Ok(())
    }

    /// Detaches the socket-level programs from `cgroup_dir`.
    pub fn detach_cgroup(&mut self, cgroup_dir: &Path) -> Result<()> {
        let meta = fs::metadata(cgroup_dir).map_err(|e| DatapathError::Attach {
            what: cgroup_dir.display().to_string(),
            detail: e.to_string(),
        })?;
        for name in SOCK_PROGRAMS {
            let _ = fs::remove_file(
                self.pin_dir
                    .join("links")
                    .join(format!("cg-{}-{name}", meta.ino())),
            );
        }
        Ok(())
    }

    /// Attaches the per-packet program at tc ingress of `ifname` (the host side of a pod's
    /// veth), looked up in the calling thread's network namespace.
    pub fn attach_pod_device(&mut self, ifname: &str) -> Result<()> {
        self.attach_tc(ifname, TcProgram::FromPod)
    }

    /// Attaches the NodePort program at tc ingress of a node's external device `ifname`.
    pub fn attach_node_device(&mut self, ifname: &str) -> Result<()> {
        self.attach_tc(ifname, TcProgram::FromNetdev)
    }

    /// Detaches whatever Keel attached to `ifname` (calling thread's netns), also when the
    /// device is already gone (its pin is remembered from the attach).
    pub fn detach_device(&mut self, ifname: &str) -> Result<()> {
        let remembered = self
            .tc_pins
            .remove(&(current_netns(ifname)?, ifname.to_string()));
        let pins = match (remembered, self.tc_pin(ifname)) {
            (None, Err(e)) => return Err(e),
            (remembered, current) => remembered.into_iter().chain(current.ok()),
        };
        for pin in pins {
            let _ = fs::remove_file(pin);
        }
        Ok(())
    }

    /// Removes the tc link pins of devices in the calling thread's network namespace that no
    /// longer exist (pod veths deleted while no agent was running). Pins of other namespaces
    /// are left alone. Returns how many were removed.
    pub fn prune_device_pins(&mut self) -> Result<usize> {
        let netns = current_netns("(any)")?;
        let dir = self.pin_dir.join("links");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(0);
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((pin_netns, ifindex)) = parse_tc_pin(&name) else {
                continue;
            };
            let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
            // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires.
            let exists = !unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) }.is_null();
            if pin_netns == netns && !exists && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        self.tc_pins.retain(|_, pin| pin.exists());
        Ok(removed)
    }

    fn tc_pin(&self, ifname: &str) -> Result<PathBuf> {
        let attach_err = |detail: String| DatapathError::Attach {
            what: format!("tc on {ifname}"),
            detail,
        };
        let netns = current_netns(ifname)?;
        let c = std::ffi::CString::new(ifname).map_err(|e| attach_err(e.to_string()))?;
        // SAFETY: valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            return Err(attach_err(format!(
                "no such interface in this network namespace: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(self
            .pin_dir
            .join("links")
            .join(format!("tc-{netns}-{ifindex}-ingress")))
    }

    fn attach_tc(&mut self, ifname: &str, which: TcProgram) -> Result<()> {
        let name = which.name();
        let key = (current_netns(ifname)?, ifname.to_string());
        let pin = self.tc_pin(ifname)?;
        if self.replace_pinned(&pin, name)? {
            self.tc_pins.insert(key, pin);
            return Ok(());
        }
        let what = format!("{name} to {ifname}");
        let prog: &mut SchedClassifier = program_mut(&mut self.ebpf, name)?;
        let id = prog
            .attach(ifname, TcAttachType::Ingress)
            .map_err(|e| DatapathError::Attach {
                what: what.clone(),
                detail: e.to_string(),
            })?;
        let link = prog
            .take_link(id)
            .map_err(|source| DatapathError::Program { name, source })?;
        let fd: FdLink = link
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| DatapathError::Attach {
                what: what.clone(),
                detail: e.to_string(),
            })?;
        fd.pin(&pin).map_err(|e| DatapathError::Attach {
            what,
            detail: e.to_string(),
        })?;
        debug!(program = name, ifname, "attached");
        self.tc_pins.insert(key, pin);
        Ok(())
    }

    /// If a link is pinned at `pin`, make it run our freshly loaded `name` (atomic swap).
    fn replace_pinned(&mut self, pin: &Path, name: &'static str) -> Result<bool> {
        let link = match sys::obj_get(pin) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(DatapathError::Attach {
                    what: pin.display().to_string(),
                    detail: e.to_string(),
                });
            }
        };
        let prog = self.ebpf.program(name).ok_or(DatapathError::Program {
            name,
            source: ProgramError::NotLoaded,
        })?;
        let fd = prog
            .fd()
            .map_err(|source| DatapathError::Program { name, source })?;
        sys::link_update(link.as_fd(), fd.as_fd()).map_err(|e| DatapathError::Attach {
            what: format!("{name} (replacing the program of {})", pin.display()),
            detail: e.to_string(),
        })?;
        debug!(program = name, pin = %pin.display(), "replaced program behind pinned link");
        Ok(true)
    }

    /// Sets the node's own addresses: where NodePorts answer.
    pub fn set_node_addresses(&mut self, addrs: &[Ipv4Addr]) -> Result<()> {
        let want: BTreeSet<Ipv4Addr> = addrs.iter().copied().collect();
        for a in want.difference(&self.node_addrs) {
            self.maps
                .node_addrs
                .insert(u32::from_ne_bytes(a.octets()), 0, 0)
                .map_err(|source| DatapathError::Write {
                    map: map_names::NODE_ADDRS,
                    source,
                })?;
        }
        for a in self.node_addrs.difference(&want) {
            ignore_missing(self.maps.node_addrs.remove(&u32::from_ne_bytes(a.octets()))).map_err(
                |source| DatapathError::Write {
                    map: map_names::NODE_ADDRS,
                    source,
                },
            )?;
        }
        self.node_addrs = want;
        Ok(())
    }

    /// Programs the complete desired state, writing only the entries that change.
    pub fn sync<S, E>(&mut self, services: &[S], slices: &[E]) -> Result<SyncStats>
    where
        S: std::borrow::Borrow<Service>,
        E: std::borrow::Borrow<EndpointSlice>,
    {
        let desired = translate(services, slices, &self.node);
        for w in &desired.warnings {
            warn!("{w}");
        }
        let plan = self.state.plan(&desired);
        let writes = plan.ops.iter().filter(|op| op.is_entry_write()).count();
        self.apply(&plan.ops)?;
        self.state = plan.next;
        Ok(SyncStats {
            frontends: self.state.frontends().len(),
            backends: self.state.backend_count(),
            writes,
            warnings: desired.warnings,
        })
    }

    fn apply(&mut self, ops: &[MapOp]) -> Result<()> {
        let mut purge: HashSet<(u32, u32)> = HashSet::new();
        let m = &mut self.maps;
        let werr = |map: &'static str| move |source| DatapathError::Write { map, source };
        let berr = |map: &'static str| {
            move |e: std::io::Error| DatapathError::Write {
                map,
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_batch",
                    io_error: e,
                }),
            }
        };
        // Runs of the same kind of write go to the kernel as one batch, in order, so the
        // consistency ordering of the plan is kept.
        let mut i = 0;
        while i < ops.len() {
            let run = ops[i..]
                .iter()
                .take_while(|op| std::mem::discriminant(*op) == std::mem::discriminant(&ops[i]))
                .count();
            let batch = &ops[i..i + run];
            i += run;
            // One batch call for a run of puts or deletes into one map.
            macro_rules! put_batch {
                ($variant:ident, $map:expr, $name:expr) => {{
                    let (k, v): (Vec<_>, Vec<_>) = batch
                        .iter()
                        .filter_map(|op| match op {
                            MapOp::$variant(k, v) => Some((*k, *v)),
                            _ => None,
                        })
                        .unzip();
                    sys::update_batch($map.map().fd().as_fd(), &k, &v).map_err(berr($name))?;
                }};
            }
            macro_rules! delete_batch {
                ($variant:ident, $map:expr, $name:expr) => {{
                    let k: Vec<_> = batch
                        .iter()
                        .filter_map(|op| match op {
                            MapOp::$variant(k) => Some(*k),
                            _ => None,
                        })
                        .collect();
                    sys::delete_batch($map.map().fd().as_fd(), &k).map_err(berr($name))?;
                }};
            }
            match &batch[0] {
                MapOp::PutBackend(..) => put_batch!(PutBackend, m.backends, map_names::BACKENDS),
                MapOp::DeleteBackend(_) => {
                    delete_batch!(DeleteBackend, m.backends, map_names::BACKENDS)
                }
                MapOp::PutService(..) => put_batch!(PutService, m.services, map_names::SERVICES),
                MapOp::DeleteService(_) => {
                    delete_batch!(DeleteService, m.services, map_names::SERVICES)
                }
                MapOp::PutRevNat(..) => put_batch!(PutRevNat, m.rev_nat, map_names::REV_NAT),
                _ => {
                    for op in batch {
                        match op {
                            MapOp::DeleteRevNat(id) => ignore_missing(m.rev_nat.remove(id))
                                .map_err(werr(map_names::REV_NAT))?,
                            MapOp::DeleteCounters(id) => ignore_missing(m.counters.remove(id))
                                .map_err(werr(map_names::SERVICE_COUNTERS))?,
                            MapOp::Retire(addr, rev_nat) => {
                                let v = Retired {
                                    rev_nat: *rev_nat,
                                    _pad: 0,
                                    retired_ns: sys::monotonic_ns(),
                                };
                                m.retired
                                    .insert(addr, v, 0)
                                    .map_err(werr(map_names::RETIRED_BACKENDS))?
                            }
                            MapOp::Unretire(addr) => ignore_missing(m.retired.remove(addr))
                                .map_err(werr(map_names::RETIRED_BACKENDS))?,
                            MapOp::PurgeAffinity {
                                rev_nat,
                                backend_id,
                            } => {
                                purge.insert((*rev_nat, *backend_id));
                            }
                            // Handled as batches above.
                            MapOp::PutBackend(..)
                            | MapOp::DeleteBackend(_)
                            | MapOp::PutService(..)
                            | MapOp::DeleteService(_)
                            | MapOp::PutRevNat(..) => {}
                        }
                    }
                }
            }
        }
        if !purge.is_empty() {
            let stale: Vec<AffinityKey> = m
                .affinity
                .iter()
                .filter_map(|r| r.ok())
                .filter(|(k, v)| purge.contains(&(k.rev_nat, v.backend_id)))
                .map(|(k, _)| k)
                .collect();
            for k in stale {
                ignore_missing(m.affinity.remove(&k)).map_err(werr(map_names::AFFINITY))?;
            }
        }
        Ok(())
    }

    /// Reads the drop-reason and per-frontend counters.
    pub fn counters(&self) -> Result<Counters> {
        let mut out = Counters::default();
        for reason in DropReason::ALL {
            let v =
                self.maps
                    .drops
                    .get(&(reason as u32), 0)
                    .map_err(|source| DatapathError::Map {
                        name: map_names::DROPS,
                        source,
                    })?;
            out.drops.insert(reason.name(), v.iter().sum());
        }
        let by_rev: BTreeMap<u32, String> = self
            .state
            .frontends()
            .iter()
            .map(|(fe, p)| (p.rev_nat, fe.to_string()))
            .collect();
        for entry in self.maps.counters.iter() {
            let (id, per_cpu) = entry.map_err(|source| DatapathError::Map {
                name: map_names::SERVICE_COUNTERS,
                source,
            })?;
            let Some(name) = by_rev.get(&id) else {
                continue;
            };
            let mut sum = ServiceCounters::default();
            for c in per_cpu.iter() {
                sum.socket_lb += c.socket_lb;
                sum.packet_lb_flows += c.packet_lb_flows;
                sum.packets += c.packets;
                sum.rejected += c.rejected;
            }
            out.services.insert(name.clone(), sum);
        }
        Ok(out)
    }

    /// Number of live conntrack entries (both directions).
    pub fn conntrack_len(&self) -> usize {
        self.maps.conntrack.keys().filter(|k| k.is_ok()).count()
    }

    /// Runs a tc program on one packet through `BPF_PROG_TEST_RUN`: returns the verdict and
    /// the packet as the program left it.
    pub fn test_run(&self, which: TcProgram, packet: &[u8]) -> Result<(u32, Vec<u8>)> {
        let name = which.name();
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .ok_or(DatapathError::Program {
                name,
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| DatapathError::Program { name, source })?;
        let mut out = vec![0u8; packet.len() + 256];
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .map_err(|source| DatapathError::Program { name, source })?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    /// Detaches every program, unpins every map and removes the pin directory.
    pub fn teardown(self) -> Result<()> {
        let pin_dir = self.pin_dir.clone();
        drop(self);
        fs::remove_dir_all(&pin_dir).map_err(|source| DatapathError::PinDir {
            path: pin_dir,
            source,
        })
    }
}

/// `tc-<netns inode>-<ifindex>-ingress` → (netns inode, ifindex).
fn parse_tc_pin(name: &str) -> Option<(u64, u32)> {
    let rest = name.strip_prefix("tc-")?.strip_suffix("-ingress")?;
    let (netns, ifindex) = rest.split_once('-')?;
    Some((netns.parse().ok()?, ifindex.parse().ok()?))
}

/// The calling thread's network namespace (its inode), which tc pins are named with.
fn current_netns(ifname: &str) -> Result<u64> {
    fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .map_err(|e| DatapathError::Attach {
            what: format!("tc on {ifname}"),
            detail: e.to_string(),
        })
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DatapathError::Program {
            name,
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// Deleting what is already gone is success (ops are idempotent so a failed sync can be redone).
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_tc_pin;

    #[test]
    fn tc_pin_names_parse() {
        assert_eq!(
            parse_tc_pin("tc-4026531840-17-ingress"),
            Some((4026531840, 17))
        );
        assert_eq!(parse_tc_pin("tc-x-17-ingress"), None);
        assert_eq!(parse_tc_pin("cgroup-connect4"), None);
        assert_eq!(parse_tc_pin("tc-1-2-egress"), None);
    }
}

//! Pod networking of the process runtime: a network namespace per pod, a veth pair to the node
//! and routed addressing, all through netlink (rtnetlink) and raw syscalls, never `ip`.
//!
//! Layout (routed, like Calico and Cilium):
//! - the pod's namespace is bind-mounted at `<run_dir>/netns/<uid>` (as `ip netns add` does);
//!   inside it `lo` is up and `eth0` carries `<pod ip>/32`, with a link-scope route to the
//!   gateway and a default route through it;
//! - the host side of the veth, `keel` + 8 hex digits of a hash of the uid, stays in the agent's
//!   namespace, carries the gateway address (the first host address of the podCIDR) as a /32
//!   and has a /32 route to the pod; its alias holds the pod uid, which tells our veths apart
//!   from a hash collision;
//! - the node forwards IPv4 and has reverse-path filtering off.
//!
//! Namespace switching happens only on short-lived threads started for the purpose (a new
//! namespace is made with `unshare`, an existing one entered with `setns`); they end when their
//! work is done, so no tokio worker ever runs in a pod's namespace.
use std::collections::HashMap;
use std::fs::{self, File};
use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use netlink_packet_route::route::RouteScope;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest, Sha256};

use super::ipam::Ipam;
use crate::runtime::{Result, RuntimeError};

/// The pod's interface inside its namespace.
pub const POD_DEVICE: &str = "eth0";

/// Where a node's pod network lives.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// The node's `spec.podCIDR`.
    pub pod_cidr: Ipv4Net,
    /// Runtime directory: namespaces are mounted under `<run_dir>/netns/`.
    pub run_dir: PathBuf,
    /// State directory: address claims are kept under `<root_dir>/ipam/`.
    pub root_dir: PathBuf,
}

/// What a pod's network is made of (what `SandboxStatus` reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAttachment {
    /// The pod's network namespace (a bind mount, for `setns`).
    pub netns: PathBuf,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The host side of the pod's veth, in the agent's namespace.
    pub host_veth: String,
}

/// The pod network of a node. Create it from a thread in the agent's own network namespace:
/// host-side devices are created there.
pub struct PodNetwork {
    netns_dir: PathBuf,
    gateway: Ipv4Addr,
    ipam: Ipam,
    /// Netlink in the agent's namespace (its connection runs on the runtime `new` ran on).
    host: Handle,
    locks: UidLocks,
}

impl std::fmt::Debug for PodNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodNetwork")
            .field("netns_dir", &self.netns_dir)
            .field("cidr", &self.ipam.cidr())
            .finish_non_exhaustive()
    }
}

impl PodNetwork {
    /// Node-level setup: ip_forward=1, rp_filter off (all/default), the namespace mount
    /// directory and the IPAM state dir. Idempotent.
    pub async fn new(config: NetworkConfig) -> Result<PodNetwork> {
        let ipam = Ipam::open(&config.root_dir.join("ipam"), config.pod_cidr)?;
        for (key, value) in [
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/default/rp_filter", "0"),
        ] {
            write_sysctl(key, value)?;
        }
        let netns_dir = config.run_dir.join("netns");
        prepare_netns_dir(&netns_dir)?;
        let (connection, host, _) = rtnetlink::new_connection()
            .map_err(|e| RuntimeError::System(format!("opening a netlink socket: {e}")))?;
        tokio::spawn(connection);
        Ok(PodNetwork {
            netns_dir,
            gateway: ipam.gateway(),
            ipam,
            host,
            locks: UidLocks::default(),
        })
    }

    /// The pods' gateway: the first host address of the pod CIDR.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The address allocator (for garbage-collecting the addresses of vanished pods).
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// The path of pod `uid`'s network namespace.
    pub fn netns_path(&self, uid: &str) -> Result<PathBuf> {
        check_uid(uid)?;
        Ok(self.netns_dir.join(uid))
    }

    /// Creates (or finds: idempotent by uid) the pod's namespace at `<run_dir>/netns/<uid>`,
    /// allocates its address, creates the veth pair, addresses and routes. Pieces that are
    /// already there are kept (a running pod's namespace is never replaced); missing or stale
    /// ones are (re)made.
    pub async fn setup(&self, uid: &str) -> Result<PodAttachment> {
        let netns = self.netns_path(uid)?;
        let _lock = self.locks.lock(uid).await;
        let ip = self.ipam.allocate(uid)?;
        let host_veth = host_veth_name(uid);
        let plan = Plan {
            uid: uid.to_string(),
            ip,
            gateway: self.gateway,
            host_veth: host_veth.clone(),
        };
        let host = self.host.clone();
        let outcome = in_pod_netns(netns.clone(), move |pod, netns_file| {
            configure(pod, host, netns_file, plan)
        })
        .await;
        let result = match outcome {
            Ok(NsOutcome { result: Ok(()), .. }) => {
                // Effective rp_filter is max(all, device); `all` is 0, make the device 0 too
                // in case `default` was changed after we set it.
                write_sysctl(&format!("net/ipv4/conf/{host_veth}/rp_filter"), "0").map(|()| {
                    PodAttachment {
                        netns,
                        ip,
                        host_veth,
                    }
                })
            }
            Ok(NsOutcome {
                result: Err(e),
                created,
            }) => {
                if created {
                    // Nothing of this pod ran yet: leave nothing behind.
                    let _ = self.remove(uid).await;
                }
                Err(e)
            }
            Err(e) => {
                if !is_netns_mount(&netns) {
                    // The namespace could not be made: give the address back.
                    let _ = self.remove(uid).await;
                }
                Err(e)
            }
        };
        result.map_err(|e| context(e, &format!("setting up the network of pod {uid}")))
    }

    /// Removes the veth (host side, which takes the pod side with it), the namespace mount and
    /// file, and releases the address. Idempotent: a missing piece is fine.
    pub async fn teardown(&self, uid: &str) -> Result<()> {
        check_uid(uid)?;
        let _lock = self.locks.lock(uid).await;
        self.remove(uid)
            .await
            .map_err(|e| context(e, &format!("tearing down the network of pod {uid}")))
    }

    /// The attachment of a pod set up earlier (after an agent restart too), if its namespace
    /// still exists and it holds an address. [`PodNetwork::setup`] repairs missing pieces.
    pub async fn find(&self, uid: &str) -> Result<Option<PodAttachment>> {
        let netns = self.netns_path(uid)?;
        if !is_netns_mount(&netns) {
            return Ok(None);
        }
        Ok(self.ipam.lookup(uid).map(|ip| PodAttachment {
            netns,
            ip,
            host_veth: host_veth_name(uid),
        }))
    }

    /// Removes every piece of pod `uid`'s network, trying all of them; the first error wins.
    async fn remove(&self, uid: &str) -> Result<()> {
        let mut first_error = None;
        let name = host_veth_name(uid);
        match get_link(&self.host, &name).await {
            Ok(Some(link)) if alias(&link).is_none_or(|owner| owner == uid) => {
                if let Err(e) = delete_link(&self.host, link.header.index).await {
                    first_error.get_or_insert(context(e, &format!("deleting veth {name}")));
                }
            }
            // A hash collision's veth belongs to the other pod.
            Ok(_) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = remove_netns(&self.netns_dir.join(uid)) {
            first_error.get_or_insert(e);
        }
        if let Err(e) = self.ipam.release(uid) {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Name of the host side of pod `uid`'s veth: `keel` + 8 hex digits of a stable hash (SHA-256)
/// of the uid (13 characters, within the 15 an interface name may have).
pub fn host_veth_name(uid: &str) -> String {
    let digest = Sha256::digest(uid.as_bytes());
    let mut name = String::from("keel");
    for byte in &digest[..4] {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

/// Removes the namespace mount directory's own bind mount (made by [`PodNetwork::new`]) and
/// any namespace still mounted in it, for a node that is being taken down.
pub fn unmount_netns_dir(run_dir: &Path) -> Result<()> {
    let dir = run_dir.join("netns");
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            remove_netns(&entry.path())?;
        }
    }
    unmount_all(&dir)
}

/// What [`configure`] makes.
struct Plan {
    uid: String,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    host_veth: String,
}

/// Makes the veth pair, addresses and routes of a pod, reusing what is already right. Runs on
/// the pod namespace's thread: `pod` talks to the pod's namespace, `host` to the agent's.
async fn configure(pod: Handle, host: Handle, netns: File, plan: Plan) -> Result<()> {
    let lo = require_link(&pod, "lo").await?;
    set_up(&pod, lo.header.index, None).await?;

    let host_link = get_link(&host, &plan.host_veth).await?;
    let pod_link = get_link(&pod, POD_DEVICE).await?;
    if let Some(owner) = host_link.as_ref().and_then(alias)
        && owner != plan.uid
    {
        return Err(RuntimeError::System(format!(
            "veth name {} is taken by pod {owner} (hash collision)",
            plan.host_veth
        )));
    }
    let paired = match (&host_link, &pod_link) {
        (Some(h), Some(p)) => peer_index(h) == Some(p.header.index),
        _ => false,
    };
    if !paired {
        // Stale halves (an interrupted setup, a replaced namespace): start over.
        if let Some(h) = &host_link {
            delete_link(&host, h.header.index).await?;
        }
        if let Some(p) = &pod_link {
            delete_link(&pod, p.header.index).await?;
        }
        let peer = LinkUnspec::new_with_name(POD_DEVICE)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        host.link()
            .add(
                LinkVeth::new(&plan.host_veth, POD_DEVICE)
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| netlink(&format!("creating veth {}", plan.host_veth), e))?;
    }
    drop(netns);

    // Host side: up, owned, the gateway address and the route to the pod.
    let host_index = require_link(&host, &plan.host_veth).await?.header.index;
    set_up(&host, host_index, Some(&plan.uid)).await?;
    host.address()
        .add(host_index, plan.gateway.into(), 32)
        .replace()
        .execute()
        .await
        .map_err(|e| {
            netlink(
                &format!("adding {}/32 to {}", plan.gateway, plan.host_veth),
                e,
            )
        })?;
    add_route(
        &host,
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(plan.ip, 32)
            .output_interface(host_index)
            .scope(RouteScope::Link),
        &format!("route to {} via {}", plan.ip, plan.host_veth),
    )
    .await?;

    // Pod side: only the pod address, up, the gateway on-link and the default route.
    let eth0 = require_link(&pod, POD_DEVICE).await?.header.index;
    let addresses: Vec<_> = pod
        .address()
        .get()
        .set_link_index_filter(eth0)
        .execute()
        .try_collect()
        .await
        .map_err(|e| netlink("listing the pod's addresses", e))?;
    for address in addresses {
        let is_v4 = address.header.family == netlink_packet_route::AddressFamily::Inet;
        let is_ours = address.header.prefix_len == 32
            && address.attributes.iter().any(|a| {
                matches!(a, netlink_packet_route::address::AddressAttribute::Local(ip)
                    if *ip == std::net::IpAddr::V4(plan.ip))
            });
        if is_v4 && !is_ours {
            pod.address()
                .del(address)
                .execute()
                .await
                .map_err(|e| netlink("removing a stale pod address", e))?;
        }
    }
    pod.address()
        .add(eth0, plan.ip.into(), 32)
        .replace()
        .execute()
        .await
        .map_err(|e| netlink(&format!("adding {}/32 to {POD_DEVICE}", plan.ip), e))?;
    set_up(&pod, eth0, None).await?;
    add_route(
        &pod,
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(plan.gateway, 32)
            .output_interface(eth0)
            .scope(RouteScope::Link),
        &format!("route to the gateway {}", plan.gateway),
    )
    .await?;
    add_route(
        &pod,
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(plan.gateway)
            .output_interface(eth0),
        &format!("default route via {}", plan.gateway),
    )
    .await
}

/// The link named `name`, if there is one.
async fn get_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await
    {
        Ok(link) => Ok(link),
        Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Ok(None),
        Err(e) => Err(netlink(&format!("looking up link {name}"), e)),
    }
}

async fn require_link(handle: &Handle, name: &str) -> Result<LinkMessage> {
    get_link(handle, name)
        .await?
        .ok_or_else(|| RuntimeError::System(format!("link {name} vanished during setup")))
}

/// Deletes a link; one that is already gone is fine.
async fn delete_link(handle: &Handle, index: u32) -> Result<()> {
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno_of(&e) == Some(Errno::ENODEV) => Ok(()),
        Err(e) => Err(netlink(&format!("deleting link {index}"), e)),
    }
}

/// Brings a link up, labelling it with `alias` if given.
async fn set_up(handle: &Handle, index: u32, alias: Option<&str>) -> Result<()> {
    let mut message = LinkUnspec::new_with_index(index).up();
    if let Some(alias) = alias {
        message = message.alias(alias);
    }
    handle
        .link()
        .set(message.build())
        .execute()
        .await
        .map_err(|e| netlink(&format!("setting link {index} up"), e))
}

async fn add_route(
    handle: &Handle,
    route: RouteMessageBuilder<Ipv4Addr>,
    what: &str,
) -> Result<()> {
    handle
        .route()
        .add(route.build())
        .replace()
        .execute()
        .await
        .map_err(|e| netlink(&format!("adding the {what}"), e))
}

fn alias(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(alias) => Some(alias.as_str()),
        _ => None,
    })
}

/// A veth's peer interface index (in the peer's namespace).
fn peer_index(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(index) => Some(*index),
        _ => None,
    })
}

fn errno_of(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(message) => {
            Some(Errno::from_raw(message.raw_code().saturating_abs()))
        }
        _ => None,
    }
}

fn netlink(what: &str, e: rtnetlink::Error) -> RuntimeError {
    let detail = match &e {
        rtnetlink::Error::NetlinkError(message) => message.to_io().to_string(),
        other => other.to_string(),
    };
    RuntimeError::System(format!("netlink: {what}: {detail}"))
}

fn context(e: RuntimeError, what: &str) -> RuntimeError {
    match e {
        RuntimeError::System(message) => RuntimeError::System(format!("{what}: {message}")),
        RuntimeError::Invalid(message) => RuntimeError::Invalid(format!("{what}: {message}")),
        other => other,
    }
}

/// The result of work done in a pod's namespace.
struct NsOutcome<T> {
    /// Whether the namespace was created for this work.
    created: bool,
    result: Result<T>,
}

/// Runs `work` on a new thread inside the namespace mounted at `path`, creating it (unshare +
/// bind mount) when it is not there. `work` gets a netlink handle of that namespace and the
/// namespace's file. The thread ends with the work, so it never has to switch back.
async fn in_pod_netns<T, F, Fut>(path: PathBuf, work: F) -> Result<NsOutcome<T>>
where
    T: Send + 'static,
    F: FnOnce(Handle, File) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("keel-netns".into())
        .spawn(move || {
            let outcome = (|| {
                let (netns, created) = enter_or_create_netns(&path)?;
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(RuntimeError::from)
                    .and_then(|runtime| {
                        runtime.block_on(async {
                            let (connection, handle, _) = rtnetlink::new_connection()?;
                            tokio::spawn(connection);
                            work(handle, netns).await
                        })
                    });
                Ok(NsOutcome { created, result })
            })();
            let _ = tx.send(outcome);
        })
        .map_err(|e| RuntimeError::System(format!("starting a network namespace thread: {e}")))?;
    rx.await
        .map_err(|_| RuntimeError::System("the network namespace thread died".into()))?
}

/// Moves the calling thread into the namespace mounted at `path`, or into a new one mounted
/// there. Returns the namespace's file and whether it was created. Only for threads that end
/// afterwards.
fn enter_or_create_netns(path: &Path) -> Result<(File, bool)> {
    if is_netns_mount(path) {
        let file = File::open(path).map_err(|e| io_context("opening", path, e))?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
            RuntimeError::System(format!(
                "entering network namespace {}: {e}",
                path.display()
            ))
        })?;
        return Ok((file, false));
    }
    // A file without its mount is what an interrupted setup or teardown leaves.
    remove_netns(path)?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| RuntimeError::System(format!("creating a network namespace: {e}")))?;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .map_err(|e| io_context("creating", path, e))?;
    // /proc/thread-self: /proc/self would name the main thread's namespace.
    if let Err(e) = nix::mount::mount(
        Some("/proc/thread-self/ns/net"),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = fs::remove_file(path);
        return Err(RuntimeError::System(format!(
            "mounting the network namespace at {}: {e}",
            path.display()
        )));
    }
    let file = File::open(path).map_err(|e| io_context("opening", path, e))?;
    Ok((file, true))
}

/// Whether `path` is a mounted namespace (nsfs), not just a file.
fn is_netns_mount(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Unmounts and removes a namespace file; a missing one is fine.
fn remove_netns(path: &Path) -> Result<()> {
    unmount_all(path)?;
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_context("removing", path, e)),
    }
}

/// Lazily unmounts everything mounted at `path` (mounts may be stacked).
fn unmount_all(path: &Path) -> Result<()> {
    for _ in 0..16 {
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            // Not (or no longer) a mount point, or not there at all.
            Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
            Err(e) => {
                return Err(RuntimeError::System(format!(
                    "unmounting {}: {e}",
                    path.display()
                )));
            }
        }
    }
    Err(RuntimeError::System(format!(
        "{} is still mounted after 16 unmounts",
        path.display()
    )))
}

/// Makes the namespace directory a shared mount point, as iproute2's `ip netns add` does, so a
/// namespace unmounted here is unmounted in mount namespaces that copied it (containers) too.
fn prepare_netns_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| io_context("creating", dir, e))?;
    let mut made_mount_point = false;
    loop {
        match nix::mount::mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            // Not a mount point yet: make it one (a bind mount of itself) and retry.
            Err(Errno::EINVAL) if !made_mount_point => {
                nix::mount::mount(
                    Some(dir),
                    dir,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| {
                    RuntimeError::System(format!(
                        "bind-mounting {} onto itself: {e}",
                        dir.display()
                    ))
                })?;
                made_mount_point = true;
            }
            Err(e) => {
                return Err(RuntimeError::System(format!(
                    "making {} a shared mount: {e}",
                    dir.display()
                )));
            }
        }
    }
}

/// Writes a sysctl of the calling thread's network namespace (`key` is a path under
/// /proc/sys).
fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(key);
    fs::write(&path, value).map_err(|e| io_context(&format!("writing {value} to"), &path, e))
}

/// Accepts uids that are safe as a file name (Kubernetes uids are UUIDs).
fn check_uid(uid: &str) -> Result<()> {
    let safe = !uid.is_empty()
        && uid.len() <= 253
        && uid != "."
        && uid != ".."
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if safe {
        Ok(())
    } else {
        Err(RuntimeError::Invalid(format!("invalid pod uid {uid:?}")))
    }
}

fn io_context(action: &str, path: &Path, e: io::Error) -> RuntimeError {
    RuntimeError::System(format!("{action} {}: {e}", path.display()))
}

/// One async lock per pod uid: setup and teardown of a pod never overlap, different pods
/// proceed in parallel.
#[derive(Default)]
struct UidLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

struct UidGuard<'a> {
    locks: &'a UidLocks,
    uid: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl UidLocks {
    async fn lock(&self, uid: &str) -> UidGuard<'_> {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(uid.to_string()).or_default().clone()
        };
        UidGuard {
            locks: self,
            uid: uid.to_string(),
            guard: Some(lock.lock_owned().await),
        }
    }
}

impl Drop for UidGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.0.lock().unwrap_or_else(|e| e.into_inner());
        // Forget the lock when no one else holds or waits for it (the map and our guard are
        // the only references).
        if map
            .get(&self.uid)
            .is_some_and(|lock| Arc::strong_count(lock) == 2)
        {
            map.remove(&self.uid);
        }
        self.guard.take();
    }
}

#[cfg(test)]
mod tests {
    //! Root-only: each test runs its whole node inside a private network namespace (made by a
    //! thread that unshares and then drives a current-thread runtime), with its own run and
    //! root directories; pod namespaces are unmounted on every path.
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    fn root_or_skip(test: &str) -> bool {
        if is_root() {
            return true;
        }
        eprintln!("SKIP {test}: needs root (CI runs as root)");
        false
    }

    /// A node's directories; unmounts every namespace and the namespace directory when dropped.
    struct Node {
        dir: tempfile::TempDir,
    }

    impl Node {
        fn new() -> Node {
            Node {
                dir: tempfile::tempdir().expect("temp dir"),
            }
        }

        fn config(&self, cidr: &str) -> NetworkConfig {
            NetworkConfig {
                pod_cidr: cidr.parse().expect("test CIDR"),
                run_dir: self.dir.path().join("run"),
                root_dir: self.dir.path().join("root"),
            }
        }

        fn netns_files(&self) -> Vec<String> {
            fs::read_dir(self.dir.path().join("run/netns"))
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        }

        fn ipam_files(&self) -> Vec<String> {
            fs::read_dir(self.dir.path().join("root/ipam"))
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        }
    }

    impl Drop for Node {
        fn drop(&mut self) {
            if let Err(e) = unmount_netns_dir(&self.dir.path().join("run")) {
                eprintln!("warning: cleanup: {e}");
            }
        }
    }

    /// Runs `test` on a thread of its own inside a new network namespace (which goes away with
    /// the thread), on a current-thread runtime. Threads it starts inherit the namespace.
    fn in_private_netns<F, Fut>(test: F)
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = ()>,
    {
        std::thread::scope(|s| {
            let thread = s.spawn(|| {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(test())
            });
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        });
    }

    /// Runs `f` on a thread inside the namespace mounted at `netns`.
    fn in_pod<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(netns).expect("opening the pod namespace");
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A TCP server in the namespace at `netns` on `ip:port` answering `reply` to each of
    /// `connections` clients (bounded by a deadline). Returns once it listens.
    fn serve<'s>(
        scope: &'s std::thread::Scope<'s, '_>,
        netns: &'s Path,
        addr: SocketAddr,
        reply: &'static str,
        connections: usize,
    ) -> std::thread::ScopedJoinHandle<'s, ()> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = scope.spawn(move || {
            let file = File::open(netns).expect("opening the server namespace");
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            let listener = TcpListener::bind(addr).expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            ready_tx.send(()).expect("ready");
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut served = 0;
            while served < connections && Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.write_all(reply.as_bytes()).expect("reply");
                        served += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server ready");
        handle
    }

    fn fetch(addr: SocketAddr) -> io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    }

    /// The default route of the calling thread's namespace: (gateway, device).
    fn default_route() -> Option<(Ipv4Addr, String)> {
        let table = fs::read_to_string("/proc/thread-self/net/route").ok()?;
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1) != Some(&"00000000") {
                return None;
            }
            let gateway = u32::from_str_radix(fields.get(2)?, 16).ok()?;
            Some((
                Ipv4Addr::from(gateway.to_ne_bytes()),
                fields.first()?.to_string(),
            ))
        })
    }

    /// Names of the links of the calling thread's namespace that start with `keel`.
    async fn keel_links() -> Vec<String> {
        let (connection, handle, _) = rtnetlink::new_connection().expect("netlink");
        tokio::spawn(connection);
        let links: Vec<LinkMessage> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .expect("link dump");
        links
            .iter()
            .flat_map(|l| &l.attributes)
            .filter_map(|a| match a {
                LinkAttribute::IfName(name) if name.starts_with("keel") => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn host_veth_names_are_stable_and_short() {
        let name = host_veth_name("6a1c3e52-7f0b-4c39-9d0e-1b2a3c4d5e6f");
        assert_eq!(name, host_veth_name("6a1c3e52-7f0b-4c39-9d0e-1b2a3c4d5e6f"));
        assert_ne!(name, host_veth_name("6a1c3e52-7f0b-4c39-9d0e-1b2a3c4d5e70"));
        assert_eq!(name.len(), 12);
        assert!(name.starts_with("keel"));
        assert!(name[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        // SHA-256("pod-a") starts with these bytes: the name must not change between releases.
        assert_eq!(
            host_veth_name("pod-a"),
            format!("keel{}", &sha256_hex("pod-a")[..8])
        );
    }

    fn sha256_hex(s: &str) -> String {
        Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn rejects_uids_that_are_not_file_names() {
        for uid in ["", ".", "..", "a/b", "../x", "a b", "x\n"] {
            assert!(
                matches!(check_uid(uid), Err(RuntimeError::Invalid(_))),
                "{uid:?}"
            );
        }
        check_uid("6a1c3e52-7f0b-4c39-9d0e-1b2a3c4d5e6f").unwrap();
    }

    #[test]
    fn two_pods_talk_through_the_gateway() {
        if !root_or_skip("two_pods_talk_through_the_gateway") {
            return;
        }
        let node = Node::new();
        in_private_netns(|| async {
            let net = PodNetwork::new(node.config("10.244.0.0/24")).await.unwrap();
            assert_eq!(net.gateway(), Ipv4Addr::new(10, 244, 0, 1));
            let a = net.setup("pod-a").await.unwrap();
            let b = net.setup("pod-b").await.unwrap();
            assert_eq!(a.ip, Ipv4Addr::new(10, 244, 0, 2));
            assert_eq!(b.ip, Ipv4Addr::new(10, 244, 0, 3));
            assert_eq!(a.host_veth, host_veth_name("pod-a"));
            assert_eq!(a.netns, node.dir.path().join("run/netns/pod-a"));
            let mut links = keel_links().await;
            links.sort();
            let mut expected = vec![a.host_veth.clone(), b.host_veth.clone()];
            expected.sort();
            assert_eq!(links, expected);

            // Pod A → pod B and node → pod B over TCP; A's default route is via the gateway.
            let b_addr = SocketAddr::from((b.ip, 8080));
            std::thread::scope(|s| {
                let server = serve(s, &b.netns, b_addr, "hello from b", 2);
                let (route, reply) = in_pod(&a.netns, || (default_route(), fetch(b_addr)));
                assert_eq!(route, Some((net.gateway(), POD_DEVICE.to_string())));
                assert_eq!(reply.expect("pod A → pod B"), "hello from b");
                assert_eq!(fetch(b_addr).expect("node → pod B"), "hello from b");
                server.join().expect("server");
            });

            // Teardown removes A's veth, namespace and address, and leaves B alone.
            net.teardown("pod-a").await.unwrap();
            assert_eq!(keel_links().await, vec![b.host_veth.clone()]);
            assert!(!a.netns.exists());
            assert_eq!(node.netns_files(), vec!["pod-b".to_string()]);
            assert_eq!(node.ipam_files(), vec!["10.244.0.3".to_string()]);
            assert_eq!(net.find("pod-a").await.unwrap(), None);
            std::thread::scope(|s| {
                let server = serve(s, &b.netns, b_addr, "still here", 1);
                assert_eq!(fetch(b_addr).expect("node → pod B"), "still here");
                server.join().expect("server");
            });
            // The freed address goes to the next pod.
            let c = net.setup("pod-c").await.unwrap();
            assert_eq!(c.ip, a.ip);

            net.teardown("pod-a").await.unwrap();
            net.teardown("pod-b").await.unwrap();
            net.teardown("pod-c").await.unwrap();
            assert!(keel_links().await.is_empty());
            assert!(node.netns_files().is_empty());
            assert!(node.ipam_files().is_empty());
        });
    }

    #[test]
    fn setup_is_idempotent_and_survives_a_restart() {
        if !root_or_skip("setup_is_idempotent_and_survives_a_restart") {
            return;
        }
        let node = Node::new();
        in_private_netns(|| async {
            let net = PodNetwork::new(node.config("10.244.7.0/24")).await.unwrap();
            let first = net.setup("pod-a").await.unwrap();
            let again = net.setup("pod-a").await.unwrap();
            assert_eq!(first, again);
            assert_eq!(node.netns_files(), vec!["pod-a".to_string()]);
            assert_eq!(keel_links().await, vec![first.host_veth.clone()]);
            assert_eq!(net.find("pod-a").await.unwrap(), Some(first.clone()));
            assert_eq!(net.find("pod-x").await.unwrap(), None);

            // A restarted agent finds the pod, and setting it up again changes nothing.
            drop(net);
            let net = PodNetwork::new(node.config("10.244.7.0/24")).await.unwrap();
            assert_eq!(net.find("pod-a").await.unwrap(), Some(first.clone()));
            assert_eq!(net.setup("pod-a").await.unwrap(), first);

            // A lost veth is remade in the same namespace.
            let index = get_link(&net.host, &first.host_veth)
                .await
                .unwrap()
                .expect("host veth")
                .header
                .index;
            delete_link(&net.host, index).await.unwrap();
            assert!(keel_links().await.is_empty());
            assert_eq!(net.setup("pod-a").await.unwrap(), first);
            let addr = SocketAddr::from((first.ip, 8081));
            std::thread::scope(|s| {
                let server = serve(s, &first.netns, addr, "repaired", 1);
                assert_eq!(fetch(addr).expect("node → repaired pod"), "repaired");
                server.join().expect("server");
            });

            net.teardown("pod-a").await.unwrap();
            net.teardown("pod-a").await.unwrap();
            assert_eq!(net.find("pod-a").await.unwrap(), None);
            assert!(keel_links().await.is_empty());
            assert!(node.netns_files().is_empty());
            assert!(node.ipam_files().is_empty());
        });
    }

    #[test]
    fn a_failed_setup_leaves_nothing_and_spares_a_colliding_veth() {
        if !root_or_skip("a_failed_setup_leaves_nothing_and_spares_a_colliding_veth") {
            return;
        }
        let node = Node::new();
        in_private_netns(|| async {
            let net = PodNetwork::new(node.config("10.244.5.0/24")).await.unwrap();
            // Another pod's veth that happens to have this pod's name (a hash collision).
            let name = host_veth_name("pod-a");
            net.host
                .link()
                .add(LinkVeth::new(&name, "collision-peer").build())
                .execute()
                .await
                .unwrap();
            let index = get_link(&net.host, &name)
                .await
                .unwrap()
                .unwrap()
                .header
                .index;
            set_up(&net.host, index, Some("another-pod")).await.unwrap();

            let err = net.setup("pod-a").await.unwrap_err();
            assert!(err.to_string().contains("hash collision"), "{err}");
            assert!(node.netns_files().is_empty());
            assert!(node.ipam_files().is_empty());
            net.teardown("pod-a").await.unwrap();
            assert_eq!(keel_links().await, vec![name.clone()]);
            delete_link(&net.host, index).await.unwrap();
        });
    }

    #[test]
    fn concurrent_pods_get_distinct_addresses() {
        if !root_or_skip("concurrent_pods_get_distinct_addresses") {
            return;
        }
        let node = Node::new();
        in_private_netns(|| async {
            let net = PodNetwork::new(node.config("10.244.9.0/24")).await.unwrap();
            let uids: Vec<String> = (0..16).map(|i| format!("pod-{i}")).collect();
            let attachments = futures::future::try_join_all(uids.iter().map(|uid| net.setup(uid)))
                .await
                .unwrap();
            let mut ips: Vec<Ipv4Addr> = attachments.iter().map(|a| a.ip).collect();
            ips.sort();
            ips.dedup();
            assert_eq!(ips.len(), 16);
            assert_eq!(keel_links().await.len(), 16);
            futures::future::try_join_all(uids.iter().map(|uid| net.teardown(uid)))
                .await
                .unwrap();
            assert!(keel_links().await.is_empty());
            assert!(node.netns_files().is_empty());
            assert!(node.ipam_files().is_empty());
        });
    }

    #[test]
    fn many_setup_teardown_cycles_leave_nothing_behind() {
        if !root_or_skip("many_setup_teardown_cycles_leave_nothing_behind") {
            return;
        }
        let node = Node::new();
        in_private_netns(|| async {
            let net = PodNetwork::new(node.config("10.244.3.0/24")).await.unwrap();
            let mut setup_time = Duration::ZERO;
            for i in 0..200 {
                let uid = format!("cycle-{i}");
                let started = Instant::now();
                let pod = net.setup(&uid).await.unwrap();
                setup_time += started.elapsed();
                assert_eq!(pod.ip, Ipv4Addr::new(10, 244, 3, 2));
                net.teardown(&uid).await.unwrap();
            }
            eprintln!("mean pod network setup: {:?}", setup_time / 200);
            assert!(keel_links().await.is_empty());
            assert!(node.netns_files().is_empty());
            assert!(node.ipam_files().is_empty());
        });
    }
}

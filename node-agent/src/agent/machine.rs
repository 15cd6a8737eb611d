//! Facts about the machine the Node reports: CPUs, memory, disk, identifiers, OS and kernel,
//! and the node's address (the first global IPv4 of the default-route device).
use std::ffi::CString;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// What the Node's `capacity` and `nodeInfo` say about the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineInfo {
    pub cpus: u64,
    pub memory_bytes: u64,
    /// Size of the filesystem holding the agent's root dir.
    pub ephemeral_storage_bytes: u64,
    pub machine_id: String,
    pub system_uuid: String,
    pub boot_id: String,
    pub kernel_version: String,
    pub os_image: String,
}

impl MachineInfo {
    /// Reads the machine's facts; `root_dir` is where pod data lives (ephemeral storage).
    pub fn read(root_dir: &Path) -> Result<MachineInfo> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let memory_bytes = mem_total_bytes(&meminfo).context("no MemTotal in /proc/meminfo")?;
        let read_trimmed = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let machine_id = read_trimmed("/etc/machine-id");
        let system_uuid = read_trimmed("/sys/class/dmi/id/product_uuid");
        let boot_id = read_trimmed("/proc/sys/kernel/random/boot_id");
        let kernel_version = read_trimmed("/proc/sys/kernel/osrelease");
        let os_image = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|text| pretty_name(&text))
            .unwrap_or_else(|| "Linux".to_string());
        Ok(MachineInfo {
            cpus: cpu_count(),
            memory_bytes,
            ephemeral_storage_bytes: filesystem_bytes(root_dir)?,
            machine_id,
            system_uuid,
            boot_id,
            kernel_version,
            os_image,
        })
    }
}

/// Online CPUs.
pub fn cpu_count() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u64::try_from(n).ok().filter(|n| *n > 0).unwrap_or(1)
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        let multiplier = match parts.next() {
            Some("kB") | Some("KB") => 1024,
            None => 1,
            Some(_) => return None,
        };
        value.checked_mul(multiplier)
    })
}

/// `PRETTY_NAME` of an os-release file, unquoted.
pub fn pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.trim().strip_prefix("PRETTY_NAME=")?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        Some(value.replace("\\\"", "\"")).filter(|v| !v.is_empty())
    })
}

/// Total size of the filesystem holding `path` (statvfs), creating `path` if missing.
pub fn filesystem_bytes(path: &Path) -> Result<u64> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))?;
    // SAFETY: statvfs is plain data; zeroed is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid C string and stat a valid out pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", path.display()));
    }
    Ok(stat.f_blocks.saturating_mul(stat.f_frsize))
}

/// The interface of the IPv4 default route in a `/proc/net/route` table.
pub fn default_route_device(route_table: &str) -> Option<String> {
    route_table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (iface, destination, mask) = (fields.first()?, fields.get(1)?, fields.get(7)?);
        (*destination == "00000000" && *mask == "00000000").then(|| iface.to_string())
    })
}

fn is_global(ip: Ipv4Addr) -> bool {
    !(ip.is_loopback() || ip.is_link_local() || ip.is_unspecified() || ip.is_multicast())
}

/// Every IPv4 address of the machine's interfaces (in this network namespace), in order.
pub fn interface_addresses() -> Result<Vec<(String, Ipv4Addr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut out = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getifaddrs returned, which stays valid until freed.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it names.
            let family = unsafe { (*entry.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: AF_INET addresses are sockaddr_in.
                let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                // SAFETY: ifa_name is a NUL-terminated string owned by the list.
                let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) }
                    .to_string_lossy()
                    .into_owned();
                out.push((name, ip));
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: head came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The node's address: the first global IPv4 of the default-route device, else the first
/// global IPv4 of any device.
pub fn default_node_ip() -> Result<Ipv4Addr> {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let addresses = interface_addresses()?;
    pick_node_ip(default_route_device(&routes).as_deref(), &addresses)
}

/// [`default_node_ip`]'s choice over given facts.
pub fn pick_node_ip(
    default_device: Option<&str>,
    addresses: &[(String, Ipv4Addr)],
) -> Result<Ipv4Addr> {
    if let Some(device) = default_device
        && let Some((_, ip)) = addresses
            .iter()
            .find(|(name, ip)| name == device && is_global(*ip))
    {
        return Ok(*ip);
    }
    if let Some((_, ip)) = addresses.iter().find(|(_, ip)| is_global(*ip)) {
        return Ok(*ip);
    }
    bail!("no global IPv4 address on this machine: pass --node-ip")
}

/// This machine's hostname.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_in_bytes() {
        let meminfo = "MemTotal:       24572356 kB\nMemFree:        20000000 kB\n";
        assert_eq!(mem_total_bytes(meminfo), Some(24572356 * 1024));
        assert_eq!(mem_total_bytes("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: lots kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: 5 MB\n"), None);
    }

    #[test]
    fn os_release_pretty_name() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            pretty_name(text).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            pretty_name("PRETTY_NAME=Alpine\n").as_deref(),
            Some("Alpine")
        );
        assert_eq!(pretty_name("ID=x\n"), None);
    }

    #[test]
    fn default_route_and_node_ip() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth1\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_device(table).as_deref(), Some("eth1"));
        assert_eq!(default_route_device("Iface\tDestination\n"), None);
        let addrs = vec![
            ("lo".to_string(), Ipv4Addr::LOCALHOST),
            ("eth0".to_string(), Ipv4Addr::new(192, 168, 0, 5)),
            ("eth1".to_string(), Ipv4Addr::new(169, 254, 1, 1)),
            ("eth1".to_string(), Ipv4Addr::new(192, 168, 1, 7)),
        ];
        assert_eq!(
            pick_node_ip(Some("eth1"), &addrs).unwrap(),
            Ipv4Addr::new(192, 168, 1, 7)
        );
        assert_eq!(
            pick_node_ip(None, &addrs).unwrap(),
            Ipv4Addr::new(192, 168, 0, 5)
        );
        assert!(pick_node_ip(None, &addrs[..1]).is_err());
    }

    #[test]
    fn reads_this_machine() {
        let dir = std::env::temp_dir();
        let info = MachineInfo::read(&dir).unwrap();
        assert!(info.cpus >= 1);
        assert!(info.memory_bytes > 0);
        assert!(info.ephemeral_storage_bytes > 0);
        assert!(!info.kernel_version.is_empty());
    }
}

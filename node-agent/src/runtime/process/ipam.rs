//! Pod address management: hands out the addresses of the node's podCIDR, one file per
//! allocated address under `<root_dir>/ipam/<ip>` holding the owning pod's uid, so allocations
//! survive an agent restart.
//!
//! The lowest free address is allocated; the network address, the gateway (first host address,
//! carried by every host-side veth) and the broadcast address are never handed out. Inside the
//! process a mutex serialises allocations; on disk an address is claimed by hard-linking a fully
//! written temporary file to its final name, which fails if the name exists (like `create_new`)
//! and never leaves a half-written claim behind.
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::Ipv4Net;

use crate::runtime::{Result, RuntimeError};

/// Prefix of the temporary files a claim is written to before it is linked into place.
const TMP_PREFIX: &str = ".tmp-";

/// The address allocator of one node's pod CIDR.
#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
    cidr: Ipv4Net,
    /// Every claim on disk, address → pod uid (also claims outside `cidr`, left by an earlier
    /// podCIDR, until their pod releases them).
    allocated: Mutex<BTreeMap<Ipv4Addr, String>>,
}

impl Ipam {
    /// Opens (creating it if needed) the allocation directory `dir` for `cidr` and reads the
    /// allocations made earlier.
    pub fn open(dir: &Path, cidr: Ipv4Net) -> Result<Ipam> {
        let cidr = cidr.trunc();
        if cidr.prefix_len() > 30 {
            return Err(RuntimeError::Invalid(format!(
                "pod CIDR {cidr} is too small: it needs room for a network, a gateway, a broadcast and a pod address (at most /30)"
            )));
        }
        fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
        let mut allocated = BTreeMap::new();
        let entries = fs::read_dir(dir).map_err(|e| io_error("reading", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error("reading", dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if name.starts_with(TMP_PREFIX) {
                // A claim interrupted before it was linked into place: it claims nothing.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Ok(ip) = name.parse::<Ipv4Addr>() else {
                continue;
            };
            let uid = read_claim(&entry.path())?;
            allocated.insert(ip, uid);
        }
        Ok(Ipam {
            dir: dir.to_path_buf(),
            cidr,
            allocated: Mutex::new(allocated),
        })
    }

    /// The pod CIDR addresses come from.
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The gateway: the first host address of the CIDR.
    pub fn gateway(&self) -> Ipv4Addr {
        gateway_of(self.cidr)
    }

    /// The address of pod `uid`: the one it already holds in the CIDR, else the lowest free one.
    pub fn allocate(&self, uid: &str) -> Result<Ipv4Addr> {
        check_uid(uid)?;
        let mut allocated = self.lock();
        if let Some(ip) = self.held(&allocated, uid) {
            return Ok(ip);
        }
        // Claims of this pod outside the CIDR (an old podCIDR) are stale: drop them.
        let stale: Vec<Ipv4Addr> = owned_by(&allocated, uid).collect();
        for ip in stale {
            self.remove_claim(&mut allocated, ip)?;
        }
        let first = u32::from(self.gateway()) + 1;
        let last = u32::from(self.cidr.broadcast()) - 1;
        for candidate in (first..=last).map(Ipv4Addr::from) {
            if allocated.contains_key(&candidate) {
                continue;
            }
            match self.write_claim(candidate, uid) {
                Ok(()) => {
                    allocated.insert(candidate, uid.to_string());
                    return Ok(candidate);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // Claimed on disk behind our back (another process on the same
                    // directory): learn the claim and move on.
                    let owner = read_claim(&self.claim_path(candidate))?;
                    if owner == uid {
                        allocated.insert(candidate, owner);
                        return Ok(candidate);
                    }
                    allocated.insert(candidate, owner);
                }
                Err(e) => return Err(io_error("claiming", &self.claim_path(candidate), e)),
            }
        }
        Err(RuntimeError::System(format!(
            "no free pod address in {} ({} addresses allocated)",
            self.cidr,
            allocated.len()
        )))
    }

    /// Releases every address held by pod `uid`; returns the one it held in the CIDR, if any.
    /// Releasing a pod that holds nothing is fine.
    pub fn release(&self, uid: &str) -> Result<Option<Ipv4Addr>> {
        check_uid(uid)?;
        let mut allocated = self.lock();
        let held = self.held(&allocated, uid);
        let owned: Vec<Ipv4Addr> = owned_by(&allocated, uid).collect();
        for ip in owned {
            self.remove_claim(&mut allocated, ip)?;
        }
        Ok(held)
    }

    /// The address pod `uid` holds in the CIDR, if any.
    pub fn lookup(&self, uid: &str) -> Option<Ipv4Addr> {
        let allocated = self.lock();
        self.held(&allocated, uid)
    }

    /// Every allocation (address, pod uid), lowest address first; for garbage collection of
    /// pods that no longer exist.
    pub fn allocations(&self) -> Vec<(Ipv4Addr, String)> {
        self.lock()
            .iter()
            .map(|(ip, uid)| (*ip, uid.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Ipv4Addr, String>> {
        // The map is only changed after the disk agrees, so it stays valid after a panic.
        self.allocated.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lowest address of `uid` that is a pod address of the CIDR.
    fn held(&self, allocated: &BTreeMap<Ipv4Addr, String>, uid: &str) -> Option<Ipv4Addr> {
        owned_by(allocated, uid).find(|ip| self.is_pod_address(*ip))
    }

    fn is_pod_address(&self, ip: Ipv4Addr) -> bool {
        self.cidr.contains(&ip)
            && ip != self.cidr.network()
            && ip != self.gateway()
            && ip != self.cidr.broadcast()
    }

    fn claim_path(&self, ip: Ipv4Addr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Claims `ip` on disk for `uid`: fails with `AlreadyExists` if someone holds it.
    fn write_claim(&self, ip: Ipv4Addr, uid: &str) -> io::Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            "{TMP_PREFIX}{ip}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            file.write_all(uid.as_bytes())?;
            // link(2) fails with EEXIST if the address is taken: the claim appears atomically
            // and complete, or not at all.
            fs::hard_link(&tmp, self.claim_path(ip))
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    fn remove_claim(&self, allocated: &mut BTreeMap<Ipv4Addr, String>, ip: Ipv4Addr) -> Result<()> {
        let path = self.claim_path(ip);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("removing", &path, e)),
        }
        allocated.remove(&ip);
        Ok(())
    }
}

/// The first host address of `cidr` (the pods' gateway).
pub fn gateway_of(cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()).saturating_add(1))
}

fn owned_by<'a>(
    allocated: &'a BTreeMap<Ipv4Addr, String>,
    uid: &'a str,
) -> impl Iterator<Item = Ipv4Addr> + 'a {
    allocated
        .iter()
        .filter(move |(_, owner)| owner.as_str() == uid)
        .map(|(ip, _)| *ip)
}

fn check_uid(uid: &str) -> Result<()> {
    if uid.is_empty() || uid.len() > 256 || uid.contains(['\n', '\0']) {
        return Err(RuntimeError::Invalid(format!("invalid pod uid {uid:?}")));
    }
    Ok(())
}

fn read_claim(path: &Path) -> Result<String> {
    let content = fs::read_to_string(path).map_err(|e| io_error("reading", path, e))?;
    Ok(content.trim().to_string())
}

fn io_error(action: &str, path: &Path, e: io::Error) -> RuntimeError {
    RuntimeError::System(format!("IPAM: {action} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Net {
        s.parse().expect("test CIDR")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    #[test]
    fn allocates_lowest_free_address_after_the_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), cidr("10.244.0.0/24")).unwrap();
        assert_eq!(ipam.gateway(), ip("10.244.0.1"));
        assert_eq!(ipam.allocate("a").unwrap(), ip("10.244.0.2"));
        assert_eq!(ipam.allocate("b").unwrap(), ip("10.244.0.3"));
        assert_eq!(ipam.allocate("c").unwrap(), ip("10.244.0.4"));
        // A released address is the lowest free one again.
        assert_eq!(ipam.release("b").unwrap(), Some(ip("10.244.0.3")));
        assert_eq!(ipam.allocate("d").unwrap(), ip("10.244.0.3"));
    }

    #[test]
    fn same_uid_keeps_its_address() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), cidr("10.244.1.0/24")).unwrap();
        let first = ipam.allocate("pod").unwrap();
        assert_eq!(ipam.allocate("pod").unwrap(), first);
        assert_eq!(ipam.lookup("pod"), Some(first));
        assert_eq!(ipam.allocations(), vec![(first, "pod".to_string())]);
    }

    #[test]
    fn claims_are_files_holding_the_uid() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), cidr("10.244.0.0/24")).unwrap();
        ipam.allocate("0b6c7f0e-uid").unwrap();
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["10.244.0.2".to_string()]);
        assert_eq!(
            fs::read_to_string(dir.path().join("10.244.0.2")).unwrap(),
            "0b6c7f0e-uid"
        );
        ipam.release("0b6c7f0e-uid").unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn never_hands_out_network_gateway_or_broadcast() {
        let dir = tempfile::tempdir().unwrap();
        // A /29 has 8 addresses: network .0, gateway .1, pods .2-.6, broadcast .7.
        let ipam = Ipam::open(dir.path(), cidr("10.9.0.0/29")).unwrap();
        let got: Vec<Ipv4Addr> = (0..5)
            .map(|i| ipam.allocate(&format!("pod{i}")).unwrap())
            .collect();
        assert_eq!(
            got,
            ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
                .map(ip)
                .to_vec()
        );
        let err = ipam.allocate("one-too-many").unwrap_err();
        assert!(err.to_string().contains("no free pod address"), "{err}");
    }

    #[test]
    fn survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ipam = Ipam::open(dir.path(), cidr("10.244.0.0/24")).unwrap();
            ipam.allocate("a").unwrap();
            ipam.allocate("b").unwrap();
            ipam.release("a").unwrap();
        }
        let ipam = Ipam::open(dir.path(), cidr("10.244.0.0/24")).unwrap();
        assert_eq!(ipam.lookup("b"), Some(ip("10.244.0.3")));
        assert_eq!(ipam.lookup("a"), None);
        assert_eq!(ipam.allocate("b").unwrap(), ip("10.244.0.3"));
        assert_eq!(ipam.allocate("c").unwrap(), ip("10.244.0.2"));
    }

    #[test]
    fn interrupted_claims_and_foreign_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".tmp-10.244.0.2-1-0"), "ghost").unwrap();
        fs::write(dir.path().join("README"), "not a claim").unwrap();
        let ipam = Ipam::open(dir.path(), cidr("10.244.0.0/24")).unwrap();
        assert!(!dir.path().join(".tmp-10.244.0.2-1-0").exists());
        assert_eq!(ipam.allocate("a").unwrap(), ip("10.244.0.2"));
    }

    #[test]
    fn a_claim_made_behind_its_back_is_respected() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), cidr("10.244.0.0/24")).unwrap();
        fs::write(dir.path().join("10.244.0.2"), "other-agent-pod").unwrap();
        assert_eq!(ipam.allocate("a").unwrap(), ip("10.244.0.3"));
        assert_eq!(ipam.lookup("other-agent-pod"), Some(ip("10.244.0.2")));
    }

    #[test]
    fn addresses_of_an_old_cidr_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ipam = Ipam::open(dir.path(), cidr("10.1.0.0/24")).unwrap();
            assert_eq!(ipam.allocate("a").unwrap(), ip("10.1.0.2"));
        }
        let ipam = Ipam::open(dir.path(), cidr("10.2.0.0/24")).unwrap();
        assert_eq!(ipam.lookup("a"), None);
        assert_eq!(ipam.allocate("a").unwrap(), ip("10.2.0.2"));
        assert_eq!(ipam.allocations(), vec![(ip("10.2.0.2"), "a".to_string())]);
        assert!(!dir.path().join("10.1.0.2").exists());
    }

    #[test]
    fn release_of_an_unknown_uid_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), cidr("10.244.0.0/24")).unwrap();
        assert_eq!(ipam.release("nobody").unwrap(), None);
    }

    #[test]
    fn rejects_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Ipam::open(dir.path(), cidr("10.0.0.0/31")),
            Err(RuntimeError::Invalid(_))
        ));
        let ipam = Ipam::open(dir.path(), cidr("10.0.0.0/30")).unwrap();
        assert_eq!(ipam.allocate("only").unwrap(), ip("10.0.0.2"));
        for uid in ["", "a\nb", "nul\0"] {
            assert!(matches!(ipam.allocate(uid), Err(RuntimeError::Invalid(_))));
        }
    }

    #[test]
    fn concurrent_allocations_get_distinct_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), cidr("10.244.0.0/24")).unwrap();
        let mut got: Vec<Ipv4Addr> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|t| {
                    let ipam = &ipam;
                    s.spawn(move || {
                        (0..25)
                            .map(|i| ipam.allocate(&format!("t{t}-p{i}")).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 200);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 200);
    }
}

//! Service ClusterIP and NodePort allocation.
//!
//! The allocator is an in-memory bitmap rebuilt from the stored Services at startup (the
//! Services are the record of what is allocated), so allocations survive restarts. Within a
//! write, new allocations are held in a [`Reservation`] and rolled back if the write fails.
//! Like Kubernetes, a low static band of the range is left to explicitly requested IPs and
//! dynamic allocation prefers the upper part.
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use ipnet::Ipv4Net;
use rand::Rng;
use serde_json::{Value, json};

use super::status::Cause;

/// The NodePort range.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

/// What one write newly took (returned to the pool if the write fails).
#[derive(Debug, Default)]
pub struct Reservation {
    ips: Vec<u32>,
    ports: Vec<u16>,
}

#[derive(Debug)]
struct Pool {
    used_ips: HashSet<u32>,
    used_ports: HashSet<u16>,
}

/// Hands out ClusterIPs from the service CIDR and NodePorts from 30000-32767.
#[derive(Debug)]
pub struct ServiceAllocator {
    cidr: Ipv4Net,
    pool: Mutex<Pool>,
}

fn invalid(field: &str, message: String) -> Cause {
    Cause {
        reason: "FieldValueInvalid".into(),
        message,
        field: field.into(),
    }
}

impl ServiceAllocator {
    pub fn new(cidr: Ipv4Net) -> Self {
        ServiceAllocator {
            cidr: cidr.trunc(),
            pool: Mutex::new(Pool {
                used_ips: HashSet::new(),
                used_ports: HashSet::new(),
            }),
        }
    }

    /// The first usable address, reserved for the `kubernetes` Service.
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        // A panic while holding the lock can't leave the sets inconsistent (single inserts).
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks what a stored Service uses as taken (startup).
    pub fn seed(&self, service: &Value) {
        let mut pool = self.lock();
        for ip in cluster_ips(service) {
            if let Ok(ip) = ip.parse::<Ipv4Addr>() {
                pool.used_ips.insert(u32::from(ip));
            }
        }
        for port in node_ports(service) {
            pool.used_ports.insert(port);
        }
    }

    /// Whether an address may be allocated (inside the range, not network or broadcast).
    fn in_range(&self, ip: u32) -> bool {
        let network = u32::from(self.cidr.network());
        let broadcast = u32::from(self.cidr.broadcast());
        ip > network && ip < broadcast
    }

    /// Fills in and reserves the Service's ClusterIP and NodePorts. `old` is the stored
    /// Service on update (its allocations are kept when the new object leaves them empty).
    pub fn assign(
        &self,
        service: &mut Value,
        old: Option<&Value>,
        reservation: &mut Reservation,
    ) -> Result<(), Vec<Cause>> {
        let mut causes = Vec::new();
        let service_type = service
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if service.get("spec").is_none_or(|s| !s.is_object()) {
            service["spec"] = json!({});
        }
        if service_type == "ExternalName" {
            // ExternalName Services have no ClusterIP.
            if let Some(spec) = service["spec"].as_object_mut() {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
        } else {
            self.assign_cluster_ip(service, old, reservation, &mut causes);
        }
        self.assign_node_ports(service, &service_type, old, reservation, &mut causes);
        if causes.is_empty() {
            Ok(())
        } else {
            self.rollback(std::mem::take(reservation));
            Err(causes)
        }
    }

    fn assign_cluster_ip(
        &self,
        service: &mut Value,
        old: Option<&Value>,
        reservation: &mut Reservation,
        causes: &mut Vec<Cause>,
    ) {
        let requested = service
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let requested = if requested.is_empty() {
            service
                .pointer("/spec/clusterIPs/0")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        } else {
            requested
        };
        let old_ip = old
            .and_then(|o| o.pointer("/spec/clusterIP"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ip = if !old_ip.is_empty() {
            if !requested.is_empty() && requested != old_ip {
                causes.push(invalid(
                    "spec.clusterIPs[0]",
                    format!("Invalid value: \"{requested}\": may not change once set"),
                ));
                return;
            }
            old_ip
        } else if requested == "None" {
            "None".to_string()
        } else if requested.is_empty() {
            match self.allocate_ip(reservation) {
                Some(ip) => ip.to_string(),
                None => {
                    causes.push(invalid(
                        "spec.clusterIPs",
                        format!("failed to allocate IP: range is full ({})", self.cidr),
                    ));
                    return;
                }
            }
        } else {
            match requested.parse::<Ipv4Addr>() {
                Err(_) => {
                    causes.push(invalid("spec.clusterIPs[0]", format!("Invalid value: \"{requested}\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")));
                    return;
                }
                Ok(ip) if !self.in_range(u32::from(ip)) => {
                    causes.push(invalid(
                        "spec.clusterIPs",
                        format!("Invalid value: [\"{requested}\"]: failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {}", self.cidr),
                    ));
                    return;
                }
                Ok(ip) => {
                    let mut pool = self.lock();
                    if !pool.used_ips.insert(u32::from(ip)) {
                        causes.push(invalid("spec.clusterIPs", format!("Invalid value: [\"{requested}\"]: failed to allocate IP {requested}: provided IP is already allocated")));
                        return;
                    }
                    reservation.ips.push(u32::from(ip));
                    requested
                }
            }
        };
        let spec = &mut service["spec"];
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
        if ip != "None" || spec.get("ipFamilies").is_none() {
            spec["ipFamilies"] = json!(["IPv4"]);
        }
        if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
            spec["ipFamilyPolicy"] = json!("SingleStack");
        }
    }

    fn allocate_ip(&self, reservation: &mut Reservation) -> Option<Ipv4Addr> {
        let network = u32::from(self.cidr.network());
        let size = u32::from(self.cidr.broadcast()) - network + 1;
        let static_band = (size / 16).clamp(16, 256).min(size / 2);
        let mut pool = self.lock();
        let mut rng = rand::rng();
        // Dynamic band first (upper part), then the static band.
        for (lo, hi) in [
            (network + static_band, network + size - 2),
            (network + 1, network + static_band),
        ] {
            if lo > hi {
                continue;
            }
            let span = hi - lo + 1;
            let start = rng.random_range(0..span);
            for i in 0..span {
                let ip = lo + (start + i) % span;
                if self.in_range(ip) && pool.used_ips.insert(ip) {
                    reservation.ips.push(ip);
                    return Some(Ipv4Addr::from(ip));
                }
            }
        }
        None
    }

    fn assign_node_ports(
        &self,
        service: &mut Value,
        service_type: &str,
        old: Option<&Value>,
        reservation: &mut Reservation,
        causes: &mut Vec<Cause>,
    ) {
        let wants_node_ports = matches!(service_type, "NodePort" | "LoadBalancer");
        let old_ports: Vec<(i64, String, u16)> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .map(|ports| {
                ports
                    .iter()
                    .filter_map(|p| {
                        let node_port = p.get("nodePort").and_then(Value::as_u64)? as u16;
                        Some((
                            p.get("port").and_then(Value::as_i64).unwrap_or(0),
                            protocol_of(p),
                            node_port,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let old_set: HashSet<u16> = old_ports.iter().map(|(_, _, n)| *n).collect();
        let Some(ports) = service
            .pointer_mut("/spec/ports")
            .and_then(Value::as_array_mut)
        else {
            return;
        };
        let mut taken_here: HashSet<u16> = HashSet::new();
        for (i, port) in ports.iter_mut().enumerate() {
            let field = format!("spec.ports[{i}].nodePort");
            let requested = port
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|n| *n != 0);
            if !wants_node_ports {
                if let Some(n) = requested {
                    causes.push(invalid(
                        &field,
                        format!(
                            "Invalid value: {n}: may not be used when `type` is '{service_type}'"
                        ),
                    ));
                }
                continue;
            }
            let node_port = match requested {
                Some(n) => {
                    let Some(n) = u16::try_from(n)
                        .ok()
                        .filter(|n| NODE_PORT_RANGE.contains(n))
                    else {
                        causes.push(invalid(&field, format!("Invalid value: {n}: provided port is not in the valid range. The range of valid ports is 30000-32767")));
                        continue;
                    };
                    if !old_set.contains(&n) && !taken_here.contains(&n) {
                        let mut pool = self.lock();
                        if !pool.used_ports.insert(n) {
                            causes.push(invalid(
                                &field,
                                format!("Invalid value: {n}: provided port is already allocated"),
                            ));
                            continue;
                        }
                        reservation.ports.push(n);
                    }
                    n
                }
                None => {
                    let key = (
                        port.get("port").and_then(Value::as_i64).unwrap_or(0),
                        protocol_of(port),
                    );
                    match old_ports
                        .iter()
                        .find(|(p, proto, _)| (*p, proto.clone()) == key)
                    {
                        Some((_, _, n)) => *n,
                        None => match self.allocate_port(reservation) {
                            Some(n) => n,
                            None => {
                                causes.push(invalid(
                                    &field,
                                    "failed to allocate a nodePort: range is full".into(),
                                ));
                                continue;
                            }
                        },
                    }
                }
            };
            taken_here.insert(node_port);
            port["nodePort"] = json!(node_port);
        }
    }

    fn allocate_port(&self, reservation: &mut Reservation) -> Option<u16> {
        let mut pool = self.lock();
        let span = (NODE_PORT_RANGE.end() - NODE_PORT_RANGE.start()) as u32 + 1;
        let start = rand::rng().random_range(0..span);
        for i in 0..span {
            let port = NODE_PORT_RANGE.start() + ((start + i) % span) as u16;
            if pool.used_ports.insert(port) {
                reservation.ports.push(port);
                return Some(port);
            }
        }
        None
    }

    /// Returns a failed write's new allocations.
    pub fn rollback(&self, reservation: Reservation) {
        let mut pool = self.lock();
        for ip in reservation.ips {
            pool.used_ips.remove(&ip);
        }
        for port in reservation.ports {
            pool.used_ports.remove(&port);
        }
    }

    /// Frees what `old` used and `new` (the Service after the write; `None` if deleted) doesn't.
    pub fn release_unused(&self, old: &Value, new: Option<&Value>) {
        let new_ips: HashSet<String> = new
            .map(cluster_ips)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let new_ports: HashSet<u16> = new
            .map(node_ports)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut pool = self.lock();
        for ip in cluster_ips(old) {
            if !new_ips.contains(&ip)
                && let Ok(addr) = ip.parse::<Ipv4Addr>()
            {
                pool.used_ips.remove(&u32::from(addr));
            }
        }
        for port in node_ports(old) {
            if !new_ports.contains(&port) {
                pool.used_ports.remove(&port);
            }
        }
    }
}

fn protocol_of(port: &Value) -> String {
    port.get("protocol")
        .and_then(Value::as_str)
        .unwrap_or("TCP")
        .to_string()
}

fn cluster_ips(service: &Value) -> Vec<String> {
    let mut ips: Vec<String> = service
        .pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if let Some(ip) = service.pointer("/spec/clusterIP").and_then(Value::as_str)
        && !ips.iter().any(|i| i == ip)
    {
        ips.push(ip.to_string());
    }
    ips.retain(|ip| !ip.is_empty() && ip != "None");
    ips
}

fn node_ports(service: &Value) -> Vec<u16> {
    service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
                .filter_map(|n| u16::try_from(n).ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocator() -> ServiceAllocator {
        ServiceAllocator::new("10.96.0.0/12".parse().unwrap())
    }

    #[test]
    fn allocates_a_free_ip_in_range_and_honours_requests() {
        let a = allocator();
        let mut r = Reservation::default();
        let mut svc = json!({"spec": {"ports": [{"port": 80}]}});
        a.assign(&mut svc, None, &mut r).unwrap();
        let ip: Ipv4Addr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!("10.96.0.0/12".parse::<Ipv4Net>().unwrap().contains(&ip));
        assert_eq!(svc["spec"]["clusterIPs"], json!([ip.to_string()]));

        let mut wanted = json!({"spec": {"clusterIP": "10.96.0.10"}});
        a.assign(&mut wanted, None, &mut Reservation::default())
            .unwrap();
        assert_eq!(wanted["spec"]["clusterIP"], "10.96.0.10");
        let mut again = json!({"spec": {"clusterIP": "10.96.0.10"}});
        let causes = a
            .assign(&mut again, None, &mut Reservation::default())
            .unwrap_err();
        assert!(causes[0].message.contains("already allocated"));
        let mut outside = json!({"spec": {"clusterIP": "192.168.0.1"}});
        let causes = a
            .assign(&mut outside, None, &mut Reservation::default())
            .unwrap_err();
        assert!(causes[0].message.contains("not in the valid range"));

        // Freed on delete: the IP can be requested again.
        a.release_unused(&wanted, None);
        a.assign(&mut again, None, &mut Reservation::default())
            .unwrap();
    }

    #[test]
    fn node_ports_are_allocated_kept_and_checked() {
        let a = allocator();
        let mut svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81, "nodePort": 30080}]}});
        a.assign(&mut svc, None, &mut Reservation::default())
            .unwrap();
        let auto = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
        assert!(NODE_PORT_RANGE.contains(&auto));
        assert_eq!(svc["spec"]["ports"][1]["nodePort"], 30080);

        // An update without nodePorts keeps the old ones and the ClusterIP.
        let mut update =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81}]}});
        a.assign(&mut update, Some(&svc), &mut Reservation::default())
            .unwrap();
        assert_eq!(update["spec"]["ports"][0]["nodePort"], auto);
        assert_eq!(update["spec"]["clusterIP"], svc["spec"]["clusterIP"]);

        let mut clash =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 1, "nodePort": 30080}]}});
        assert!(
            a.assign(&mut clash, None, &mut Reservation::default())
                .unwrap_err()[0]
                .message
                .contains("already allocated")
        );
        let mut out = json!({"spec": {"type": "NodePort", "ports": [{"port": 1, "nodePort": 80}]}});
        assert!(
            a.assign(&mut out, None, &mut Reservation::default())
                .is_err()
        );
        // A failed assignment returned its ClusterIP: nothing leaked.
        let used = a.lock().used_ips.len();
        assert_eq!(used, 1);
    }

    #[test]
    fn seeded_allocations_are_taken() {
        let a = allocator();
        a.seed(&json!({"spec": {"clusterIP": "10.96.0.20", "ports": [{"nodePort": 30001}]}}));
        let mut svc = json!({"spec": {"clusterIP": "10.96.0.20"}});
        assert!(
            a.assign(&mut svc, None, &mut Reservation::default())
                .is_err()
        );
        let mut np =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 1, "nodePort": 30001}]}});
        assert!(
            a.assign(&mut np, None, &mut Reservation::default())
                .is_err()
        );
    }
}

//! The synthetic Service catalogue every datapath is programmed with: filler services first,
//! the measured targets last (the worst case for a linear rule walk).
//!
//! At scale N the table holds N ClusterIP services for the connection tests: N-1 fillers and
//! the HTTP target (walked last), plus one more, the iperf3 target, placed just before the HTTP
//! target. Fillers have three endpoints at addresses nothing answers on (`10.200.0.0/13`); the
//! targets' endpoints are the backend pods. The iperf3 target has `sessionAffinity: ClientIP`
//! because iperf3's control and data connections must reach the same backend.

use std::net::Ipv4Addr;

use anyhow::{Result, bail, ensure};

/// Namespace of every bench service.
pub const NAMESPACE: &str = "bench";
/// Port of the HTTP target (nginx in each backend).
pub const HTTP_PORT: u16 = 80;
/// Port of the iperf3 target (`iperf3 -s` in each backend).
pub const IPERF_PORT: u16 = 5201;
/// Endpoints per service.
pub const ENDPOINTS: usize = 3;
/// Most services a run may ask for (the filler endpoint range holds 3 × 174 762 addresses).
pub const MAX_SERVICES: usize = 150_000;

/// First ClusterIP (kube's default service CIDR 10.96.0.0/12; .0 skipped).
const VIP_BASE: u32 = u32::from_be_bytes([10, 96, 0, 1]);
/// First filler endpoint address.
const FILLER_EP_BASE: u32 = u32::from_be_bytes([10, 200, 0, 0]);

/// One single-port TCP ClusterIP service.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub port_name: &'static str,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<Ipv4Addr>,
    /// `sessionAffinity: ClientIP` (default timeout, 10800 s).
    pub affinity: bool,
}

impl ServiceSpec {
    /// kube-proxy's `ServicePortName` string: `namespace/name:port`.
    pub fn port_id(&self) -> String {
        format!("{NAMESPACE}/{}:{}", self.name, self.port_name)
    }
}

/// Services in table order.
#[derive(Debug)]
pub struct Catalogue {
    services: Vec<ServiceSpec>,
}

impl Catalogue {
    /// `scale` services for the connection tests (see the module doc) plus the iperf3 target.
    pub fn new(scale: usize, backends: &[Ipv4Addr]) -> Result<Catalogue> {
        if scale == 0 || scale > MAX_SERVICES {
            bail!("services per run must be within 1..={MAX_SERVICES}, got {scale}");
        }
        ensure!(
            backends.len() == ENDPOINTS,
            "need {ENDPOINTS} backends, got {}",
            backends.len()
        );
        let fillers = scale - 1;
        let vip = |i: usize| Ipv4Addr::from(VIP_BASE + i as u32);
        let mut services: Vec<ServiceSpec> = (0..fillers)
            .map(|i| ServiceSpec {
                name: format!("filler-{i:06}"),
                port_name: "http",
                vip: vip(i),
                port: HTTP_PORT,
                endpoints: (0..ENDPOINTS)
                    .map(|k| Ipv4Addr::from(FILLER_EP_BASE + (i * ENDPOINTS + k) as u32))
                    .collect(),
                affinity: false,
            })
            .collect();
        services.push(ServiceSpec {
            name: "target-iperf".into(),
            port_name: "iperf",
            vip: vip(fillers),
            port: IPERF_PORT,
            endpoints: backends.to_vec(),
            affinity: true,
        });
        services.push(ServiceSpec {
            name: "target-http".into(),
            port_name: "http",
            vip: vip(fillers + 1),
            port: HTTP_PORT,
            endpoints: backends.to_vec(),
            affinity: false,
        });
        Ok(Catalogue { services })
    }

    /// All services, in table order.
    pub fn services(&self) -> &[ServiceSpec] {
        &self.services
    }

    /// The HTTP target (last in the table).
    pub fn http_target(&self) -> &ServiceSpec {
        &self.services[self.services.len() - 1]
    }

    /// The iperf3 target (second to last, with session affinity).
    pub fn iperf_target(&self) -> &ServiceSpec {
        &self.services[self.services.len() - 2]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends() -> Vec<Ipv4Addr> {
        vec![
            Ipv4Addr::new(10, 244, 0, 11),
            Ipv4Addr::new(10, 244, 0, 12),
            Ipv4Addr::new(10, 244, 0, 13),
        ]
    }

    #[test]
    fn targets_sit_last_and_addresses_are_unique() {
        let cat = Catalogue::new(1000, &backends()).expect("valid scale");
        assert_eq!(cat.services().len(), 1001);
        assert_eq!(cat.http_target().name, "target-http");
        assert_eq!(cat.iperf_target().name, "target-iperf");
        assert!(cat.iperf_target().affinity);
        let mut vips: Vec<_> = cat.services().iter().map(|s| s.vip).collect();
        vips.sort();
        vips.dedup();
        assert_eq!(vips.len(), 1001);
        let last = Catalogue::new(MAX_SERVICES, &backends()).expect("max scale");
        let filler = &last.services()[MAX_SERVICES - 2];
        assert!(
            filler
                .endpoints
                .iter()
                .all(|a| a.octets()[..2] < [10, 208][..])
        );
    }

    #[test]
    fn rejects_bad_scales() {
        assert!(Catalogue::new(0, &backends()).is_err());
        assert!(Catalogue::new(MAX_SERVICES + 1, &backends()).is_err());
    }
}

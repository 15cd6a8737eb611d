//! End-to-end datapath tests in network namespaces: a node namespace with routed pod veths,
//! real servers in backend pods, real clients in a client pod (inside a cgroup v2 where the
//! socket programs are attached, or outside it to exercise the per-packet path), the real eBPF
//! programs and maps. Root only.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use keel_agent::{
    datapath::{Datapath, DatapathConfig},
    manifest,
};
use keel_tests::{
    cgroup::Cgroup,
    netns::{Topology, run_in_netns},
    privilege::root_or_skip,
    process::ProcessGuard,
    servers::{AskOptions, Client, Proto, Reply, ask, spawn_server},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BACKEND_PORT: u16 = 8080;
const NODE_NAME: &str = "node-a";

fn testsrv() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_keel-testsrv"))
}

/// One test's world: topology (pod 0 is the client, pods 1.. are backends), a cgroup for the
/// client, servers, and the datapath in its own pin directory. Dropped in reverse order.
struct World {
    dp: Option<Datapath>,
    pin_dir: PathBuf,
    _servers: Vec<ProcessGuard>,
    cgroup: Arc<Cgroup>,
    topo: Topology,
}

impl World {
    fn new(test: &str, backends: usize, proto: Proto) -> World {
        let topo = Topology::builder()
            .pods(backends + 1)
            .outside(true)
            .build()
            .expect("topology");
        let cgroup = Arc::new(Cgroup::create().expect("cgroup"));
        let mut servers = Vec::new();
        for i in 1..=backends {
            let pod = topo.pod(i);
            let listen = SocketAddrV4::new(pod.ip(), BACKEND_PORT);
            servers.push(
                spawn_server(testsrv(), pod.netns(), proto, listen, &format!("be{i}"))
                    .expect("server"),
            );
        }
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/keel-ns-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pin_dir);
        let mut w = World {
            dp: None,
            pin_dir,
            _servers: servers,
            cgroup,
            topo,
        };
        w.load();
        w
    }

    /// Loads (or takes over) the datapath and attaches it everywhere.
    fn load(&mut self) {
        let mut dp = Datapath::load(DatapathConfig {
            pin_dir: self.pin_dir.clone(),
            node_name: NODE_NAME.into(),
        })
        .expect("load datapath");
        dp.attach_cgroup(self.cgroup.path()).expect("attach cgroup");
        let veths: Vec<String> = self
            .topo
            .host_veths()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ext = self.topo.node_external_device().map(str::to_string);
        run_in_netns(
            self.topo.node_netns(),
            || -> Result<(), keel_agent::datapath::DatapathError> {
                for v in &veths {
                    dp.attach_pod_device(v)?;
                }
                if let Some(ext) = &ext {
                    dp.attach_node_device(ext)?;
                }
                Ok(())
            },
        )
        .expect("enter node netns")
        .expect("attach tc");
        dp.set_node_addresses(&[self.topo.node_external_addr().expect("outside link")])
            .expect("node addrs");
        self.dp = Some(dp);
    }

    fn dp(&mut self) -> &mut Datapath {
        self.dp.as_mut().expect("loaded")
    }

    fn backend_ip(&self, i: usize) -> Ipv4Addr {
        self.topo.pod(i).ip()
    }

    fn client_ns(&self) -> &str {
        self.topo.pod(0).netns()
    }

    /// Programs a service `name` at VIP:port with the given backends (pod indexes).
    fn program(&mut self, yaml: &str) {
        let objs = manifest::parse(yaml).expect("manifest");
        self.dp().sync(&objs.services, &objs.slices).expect("sync");
    }

    /// `n` separate TCP connections (one exchange each) to `to`: who answered, how often.
    fn new_connections(
        &self,
        in_cgroup: bool,
        to: SocketAddrV4,
        n: usize,
    ) -> BTreeMap<String, usize> {
        let replies: Vec<Reply> = (0..n)
            .flat_map(|_| self.ask(in_cgroup, Proto::Tcp, to, 1))
            .collect();
        tally(&replies)
    }

    /// Every backend pod as a ready endpoint.
    fn all_ready(&self) -> Vec<(Ipv4Addr, &'static str)> {
        (1..self.topo.pods().len())
            .map(|i| (self.backend_ip(i), READY))
            .collect()
    }

    /// A client keeping one TCP connection / connected UDP socket open to `to`, inside the
    /// cgroup (socket-level path) or outside it (per-packet path).
    fn long_lived(&self, in_cgroup: bool, proto: Proto, to: SocketAddrV4) -> Client {
        let cg = in_cgroup.then_some(&*self.cgroup);
        Client::start(
            testsrv(),
            self.client_ns(),
            cg,
            proto,
            to,
            AskOptions::default(),
        )
        .expect("client starts")
    }

    fn ask(&self, in_cgroup: bool, proto: Proto, to: SocketAddrV4, count: u32) -> Vec<Reply> {
        let opts = AskOptions {
            count,
            timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let cg = in_cgroup.then_some(&*self.cgroup);
        ask(testsrv(), self.client_ns(), cg, proto, to, opts).expect("client ran")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(dp) = self.dp.take() {
            let _ = dp.teardown();
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// A Service + EndpointSlice manifest.
fn service(
    name: &str,
    vip: Ipv4Addr,
    port: u16,
    proto: &str,
    extra_spec: &str,
    endpoints: &[(Ipv4Addr, &str)],
) -> String {
    let eps: String = endpoints
        .iter()
        .map(|(ip, cond)| {
            format!("- {{addresses: [{ip}], nodeName: {NODE_NAME}, conditions: {cond}}}\n")
        })
        .collect();
    let eps = if eps.is_empty() {
        "[]".to_string()
    } else {
        format!("\n{eps}")
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  clusterIP: {vip}\n{extra_spec}  ports: [{{name: p, port: {port}, protocol: {proto}, nodePort: 30080}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: p, port: {BACKEND_PORT}, protocol: {proto}}}]\nendpoints: {eps}"
    )
}

const READY: &str = "{ready: true}";

fn tally(replies: &[Reply]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for r in replies {
        let k = match r {
            Ok(a) => a.name.clone(),
            Err(e) => format!("ERR {e}"),
        };
        *t.entry(k).or_insert(0) += 1;
    }
    t
}

fn all_ok_from(replies: &[Reply], peer: SocketAddrV4) {
    for r in replies {
        let a = r
            .as_ref()
            .unwrap_or_else(|e| panic!("exchange failed: {e}; all: {replies:?}"));
        assert_eq!(
            a.peer,
            peer.into(),
            "the application must see the service address as its peer"
        );
    }
}

#[test]
fn clusterip_spreads_tcp_over_three_backends_at_the_socket_layer() {
    if !root_or_skip("clusterip_spreads_tcp_over_three_backends_at_the_socket_layer") {
        return;
    }
    let mut w = World::new("spread", 3, Proto::Http);
    let eps = w.all_ready();
    w.program(&service("web", VIP, 80, "TCP", "", &eps));
    let replies = w.ask(true, Proto::Http, SocketAddrV4::new(VIP, 80), 90);
    all_ok_from(&replies, SocketAddrV4::new(VIP, 80));
    let t = tally(&replies);
    assert_eq!(t.len(), 3, "all three backends answer: {t:?}");
    assert!(t.values().all(|n| *n >= 10), "roughly even spread: {t:?}");
    let c = w.dp().counters().unwrap();
    assert_eq!(
        c.services["10.96.0.10:80/TCP"].socket_lb, 90,
        "balanced at the socket layer"
    );
    assert_eq!(
        c.services["10.96.0.10:80/TCP"].packets, 0,
        "no packet was NATed"
    );
}

#[test]
fn traffic_that_bypasses_the_socket_hooks_is_balanced_per_packet() {
    if !root_or_skip("traffic_that_bypasses_the_socket_hooks_is_balanced_per_packet") {
        return;
    }
    let mut w = World::new("bypass", 3, Proto::Http);
    let eps = w.all_ready();
    w.program(&service("web", VIP, 80, "TCP", "", &eps));
    // Not in the cgroup: the tc program on the pod's veth does DNAT and reverse SNAT.
    let replies = w.ask(false, Proto::Http, SocketAddrV4::new(VIP, 80), 60);
    all_ok_from(&replies, SocketAddrV4::new(VIP, 80));
    assert_eq!(tally(&replies).len(), 3);
    let c = w.dp().counters().unwrap();
    assert_eq!(c.services["10.96.0.10:80/TCP"].packet_lb_flows, 60);
    assert!(
        w.dp().conntrack_len() >= 120,
        "forward and reply entries per flow"
    );
}

#[test]
fn udp_clusterip_works_connected_and_unconnected() {
    if !root_or_skip("udp_clusterip_works_connected_and_unconnected") {
        return;
    }
    let mut w = World::new("udp", 3, Proto::Udp);
    let eps = w.all_ready();
    w.program(&service("dns", VIP, 53, "UDP", "", &eps));
    let to = SocketAddrV4::new(VIP, 53);
    // Unconnected sendto/recvfrom: sendmsg4 balances each datagram, recvmsg4 restores the VIP.
    let opts = AskOptions {
        count: 60,
        unconnected: true,
        ..Default::default()
    };
    let replies = ask(
        testsrv(),
        w.client_ns(),
        Some(&w.cgroup),
        Proto::Udp,
        to,
        opts,
    )
    .unwrap();
    all_ok_from(&replies, to);
    assert_eq!(tally(&replies).len(), 3, "{:?}", tally(&replies));
    // Connected: connect4 picks one backend for the socket; getpeername shows the VIP.
    let replies = w.ask(true, Proto::Udp, to, 10);
    all_ok_from(&replies, to);
    assert_eq!(tally(&replies).len(), 1);
}

#[test]
fn nodeport_is_reachable_from_outside_the_node() {
    if !root_or_skip("nodeport_is_reachable_from_outside_the_node") {
        return;
    }
    let mut w = World::new("nodeport", 3, Proto::Http);
    let eps = w.all_ready();
    w.program(&service("web", VIP, 80, "TCP", "  type: NodePort\n", &eps));
    let node_addr = w.topo.node_external_addr().unwrap();
    let outside = w.topo.outside_netns().unwrap().to_string();
    let to = SocketAddrV4::new(node_addr, 30080);
    let opts = AskOptions {
        count: 30,
        ..Default::default()
    };
    let replies = ask(testsrv(), &outside, None, Proto::Http, to, opts).unwrap();
    all_ok_from(&replies, to);
    assert_eq!(tally(&replies).len(), 3, "{:?}", tally(&replies));
}

#[test]
fn session_affinity_holds() {
    if !root_or_skip("session_affinity_holds") {
        return;
    }
    let mut w = World::new("affinity", 3, Proto::Http);
    let eps = w.all_ready();
    w.program(&service(
        "web",
        VIP,
        80,
        "TCP",
        "  sessionAffinity: ClientIP\n",
        &eps,
    ));
    for in_cgroup in [true, false] {
        let replies = w.ask(in_cgroup, Proto::Http, SocketAddrV4::new(VIP, 80), 30);
        all_ok_from(&replies, SocketAddrV4::new(VIP, 80));
        assert_eq!(
            tally(&replies).len(),
            1,
            "in_cgroup={in_cgroup}: {:?}",
            tally(&replies)
        );
    }
}

#[test]
fn a_service_without_endpoints_rejects_instead_of_dropping() {
    if !root_or_skip("a_service_without_endpoints_rejects_instead_of_dropping") {
        return;
    }
    let mut w = World::new("reject", 1, Proto::Http);
    w.program(
        &(service("empty", VIP, 80, "TCP", "", &[])
            + "\n---\n"
            + &service("emptyudp", Ipv4Addr::new(10, 96, 0, 11), 53, "UDP", "", &[])),
    );
    for in_cgroup in [true, false] {
        let started = std::time::Instant::now();
        let replies = w.ask(in_cgroup, Proto::Http, SocketAddrV4::new(VIP, 80), 3);
        for r in &replies {
            let e = r.as_ref().expect_err("no endpoint: must fail");
            assert!(
                e.contains("refused"),
                "TCP gets a RST (connection refused), got {e:?}"
            );
        }
        // Not a timeout: a refusal comes back at once (the client's timeout is 2 s per try).
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "rejected, not dropped"
        );
        let replies = w.ask(
            in_cgroup,
            Proto::Udp,
            SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 53),
            2,
        );
        for r in &replies {
            let e = r.as_ref().expect_err("no endpoint: must fail");
            assert!(
                e.contains("refused"),
                "UDP gets ICMP port unreachable, got {e:?}"
            );
        }
    }
    assert!(w.dp().counters().unwrap().drops["no_backend"] >= 8);
}

#[test]
fn a_removed_endpoint_gets_no_new_connections_and_a_terminating_one_keeps_its_own() {
    if !root_or_skip(
        "a_removed_endpoint_gets_no_new_connections_and_a_terminating_one_keeps_its_own",
    ) {
        return;
    }
    let mut w = World::new("remove", 3, Proto::Tcp);
    let all = w.all_ready();
    w.program(&service("web", VIP, 80, "TCP", "", &all));
    let to = SocketAddrV4::new(VIP, 80);
    // Long-lived connections, through both paths, opened before the change.
    let mut socket_conn = w.long_lived(true, Proto::Tcp, to);
    let mut packet_conn = w.long_lived(false, Proto::Tcp, to);
    let first_s = socket_conn
        .exchange()
        .unwrap()
        .expect("socket-LB connection");
    let first_p = packet_conn.exchange().unwrap().expect("tc-LB connection");

    // Endpoint of the socket connection becomes terminating; the other connection's is removed.
    let victim_s: usize = first_s.name[2..].parse().unwrap();
    let mut eps: Vec<(Ipv4Addr, &str)> = Vec::new();
    for i in 1..=3 {
        if i == victim_s {
            eps.push((
                w.backend_ip(i),
                "{ready: false, serving: true, terminating: true}",
            ));
        } else {
            eps.push((w.backend_ip(i), READY));
        }
    }
    w.program(&service("web", VIP, 80, "TCP", "", &eps));
    // Existing connections keep their backend.
    for _ in 0..5 {
        assert_eq!(socket_conn.exchange().unwrap().unwrap().name, first_s.name);
        assert_eq!(packet_conn.exchange().unwrap().unwrap().name, first_p.name);
    }
    // New connections avoid the terminating endpoint, on both paths.
    for in_cgroup in [true, false] {
        let t = w.new_connections(in_cgroup, to, 20);
        assert!(
            !t.contains_key(&first_s.name),
            "terminating endpoint got new connections: {t:?}"
        );
        assert_eq!(t.len(), 2, "{t:?}");
    }
    // Removed entirely: no new connections either.
    let remaining: Vec<(Ipv4Addr, &str)> = (1..=3)
        .filter(|i| *i != victim_s)
        .map(|i| (w.backend_ip(i), READY))
        .collect();
    w.program(&service("web", VIP, 80, "TCP", "", &remaining));
    let t = w.new_connections(true, to, 20);
    assert!(!t.contains_key(&first_s.name) && t.len() == 2, "{t:?}");
}

#[test]
fn a_connected_udp_socket_moves_off_a_backend_that_went_away() {
    if !root_or_skip("a_connected_udp_socket_moves_off_a_backend_that_went_away") {
        return;
    }
    let mut w = World::new("udpmove", 3, Proto::Udp);
    let all = w.all_ready();
    w.program(&service("dns", VIP, 53, "UDP", "", &all));
    let to = SocketAddrV4::new(VIP, 53);
    let mut c = w.long_lived(true, Proto::Udp, to);
    let first = c.exchange().unwrap().expect("first answer");
    let gone: usize = first.name[2..].parse().unwrap();
    let rest: Vec<(Ipv4Addr, &str)> = (1..=3)
        .filter(|i| *i != gone)
        .map(|i| (w.backend_ip(i), READY))
        .collect();
    w.program(&service("dns", VIP, 53, "UDP", "", &rest));
    // The same connected socket: the next send reaches a live backend, and the answer still
    // comes from the service address as far as the application can tell.
    for _ in 0..5 {
        let a = c
            .exchange()
            .unwrap()
            .expect("answered after the backend left");
        assert_ne!(
            a.name, first.name,
            "still pinned to the backend that went away"
        );
        assert_eq!(a.peer, to.into());
    }
}

#[test]
fn restarting_the_loader_mid_traffic_loses_no_connection() {
    if !root_or_skip("restarting_the_loader_mid_traffic_loses_no_connection") {
        return;
    }
    let mut w = World::new("restart", 3, Proto::Tcp);
    let all = w.all_ready();
    let manifest = service("web", VIP, 80, "TCP", "", &all);
    w.program(&manifest);
    let to = SocketAddrV4::new(VIP, 80);
    let mut long_socket = w.long_lived(true, Proto::Tcp, to);
    let mut long_packet = w.long_lived(false, Proto::Tcp, to);
    let s0 = long_socket.exchange().unwrap().unwrap().name;
    let p0 = long_packet.exchange().unwrap().unwrap().name;

    // New connections keep flowing from another thread while the loader restarts.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let ns = w.client_ns().to_string();
    let traffic = {
        let (stop, failures, done, cg) = (
            stop.clone(),
            failures.clone(),
            done.clone(),
            w.cgroup.clone(),
        );
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                for in_cgroup in [true, false] {
                    let opts = AskOptions {
                        count: 5,
                        ..Default::default()
                    };
                    let replies = ask(
                        testsrv(),
                        &ns,
                        in_cgroup.then_some(&*cg),
                        Proto::Tcp,
                        to,
                        opts,
                    )
                    .unwrap();
                    failures.fetch_add(
                        replies.iter().filter(|r| r.is_err()).count(),
                        Ordering::SeqCst,
                    );
                    done.fetch_add(replies.len(), Ordering::SeqCst);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        // Drop every fd the "agent" holds (what process exit does), then load again: the
        // pinned links keep forwarding in between, the new loader takes the maps over.
        drop(w.dp.take());
        std::thread::sleep(Duration::from_millis(200));
        w.load();
        assert!(
            w.dp().took_over(),
            "the restarted loader must find the pinned state"
        );
        let objs = manifest::parse(&manifest).unwrap();
        let stats = w.dp().sync(&objs.services, &objs.slices).unwrap();
        assert_eq!(
            stats.writes, 0,
            "the rebuilt mirror matches the maps: nothing to rewrite"
        );
        assert_eq!(long_socket.exchange().unwrap().unwrap().name, s0);
        assert_eq!(long_packet.exchange().unwrap().unwrap().name, p0);
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    traffic.join().unwrap();
    assert!(
        done.load(Ordering::SeqCst) >= 20,
        "traffic ran during the restarts"
    );
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "connections failed during a loader restart"
    );
}

/// The tc pins in the world's pin directory.
fn tc_pins(pin_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(pin_dir.join("links"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("tc-"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn pins_of_devices_deleted_while_no_loader_ran_are_pruned() {
    if !root_or_skip("pins_of_devices_deleted_while_no_loader_ran_are_pruned") {
        return;
    }
    let mut w = World::new("prune", 2, Proto::Tcp);
    let before = tc_pins(&w.pin_dir);
    // Two backend veths, the client's veth and the node's outside device.
    assert_eq!(before.len(), 4, "{before:?}");
    // The loader goes away (its pins stay), then a pod's veth is deleted.
    drop(w.dp.take());
    let node_ns = w.topo.node_netns().to_string();
    let gone = w.topo.host_veths()[1].to_string();
    let status = std::process::Command::new("ip")
        .args(["-n", &node_ns, "link", "del", &gone])
        .status()
        .expect("ip link del");
    assert!(status.success());
    // A new loader takes over and prunes in the node's namespace.
    w.dp = Some(
        Datapath::load(DatapathConfig {
            pin_dir: w.pin_dir.clone(),
            node_name: NODE_NAME.into(),
        })
        .expect("take over"),
    );
    let removed = run_in_netns(&node_ns, || w.dp().prune_device_pins())
        .expect("enter node netns")
        .expect("prune");
    assert_eq!(removed, 1);
    let after = tc_pins(&w.pin_dir);
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.iter().all(|p| before.contains(p)));
    // Pruning from another namespace (this thread's) touches nothing of the node's.
    assert_eq!(w.dp().prune_device_pins().expect("prune"), 0);
    assert_eq!(tc_pins(&w.pin_dir), after);
}

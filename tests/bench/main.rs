use keel_tests::{cgroup::Cgroup, netns::*, servers::*, process::*};
use std::net::SocketAddrV4;
use std::time::Duration;
fn main() -> anyhow::Result<()> {
    let bin = std::path::PathBuf::from("/work/main/target/debug/keel-testsrv");
    let topo = Topology::builder().pods(3).outside(true).build()?;
    println!("{:?}", topo);
    let cg = Cgroup::create()?;
    println!("cg {}", cg.path().display());
    let _s1 = spawn_server(&bin, topo.pod(1).netns(), Proto::Http, SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 8080), "b1")?;
    let _s2 = spawn_server(&bin, topo.pod(2).netns(), Proto::Tcp, SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 9000), "b2")?;
    let _s3 = spawn_server(&bin, topo.pod(2).netns(), Proto::Udp, SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 9001), "b2u")?;
    let r = ask(&bin, topo.pod(0).netns(), Some(&cg), Proto::Http, SocketAddrV4::new(topo.pod(1).ip(), 8080), AskOptions{count:3, ..Default::default()})?;
    println!("{r:?}");
    let r = ask(&bin, topo.outside_netns().unwrap(), None, Proto::Tcp, SocketAddrV4::new(topo.pod(2).ip(), 9000), AskOptions{count:2, ..Default::default()})?;
    println!("{r:?}");
    let r = ask(&bin, topo.pod(0).netns(), None, Proto::Udp, SocketAddrV4::new(topo.pod(2).ip(), 9001), AskOptions{count:2, unconnected: true, ..Default::default()})?;
    println!("{r:?}");
    let r = ask(&bin, topo.pod(0).netns(), None, Proto::Tcp, SocketAddrV4::new(topo.pod(2).ip(), 9999), AskOptions{count:2, ..Default::default()})?;
    println!("{r:?}");
    let mut c = Client::start(&bin, topo.pod(0).netns(), Some(&cg), Proto::Tcp, SocketAddrV4::new(topo.pod(2).ip(), 9000), AskOptions::default())?;
    println!("{:?} {:?}", c.exchange()?, c.exchange()?);
    println!("procs in cg {:?}", cg.procs()?);
    let n = run_in_netns(topo.node_netns(), || std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))??;
    let r = run_in_netns(topo.node_netns(), || std::fs::read_to_string("/proc/sys/net/ipv4/conf/veth-pod0/rp_filter"))??;
    let h = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?;
    println!("fwd node {n} host {h} rp {r}");
    let out = run_in(topo.node_netns(), None, { let mut c = std::process::Command::new("ip"); c.args(["-br","addr"]); c}, Limits::timeout(Duration::from_secs(2)))?;
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let out = run_in(topo.node_netns(), None, { let mut c = std::process::Command::new("ip"); c.args(["route"]); c}, Limits::timeout(Duration::from_secs(2)))?;
    println!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

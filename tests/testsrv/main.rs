//! `keel-testsrv`: a tiny server that answers with its name, and the matching client, so
//! datapath tests can tell which backend served a request without external tools.
//!
//! Servers (print `READY <addr>` on stdout once listening, exit after `--lifetime-s`):
//! - `keel-testsrv tcp --listen ADDR:PORT --name NAME`: answers every line received on a
//!   connection with `NAME\n`, keeping the connection open (long-lived flows can be checked).
//! - `keel-testsrv udp --listen ADDR:PORT --name NAME`: answers every datagram with `NAME\n`.
//! - `keel-testsrv http --listen ADDR:PORT --name NAME`: answers every HTTP request with a
//!   `200` whose body is `NAME\n`, then closes.
//!
//! Client: `keel-testsrv ask tcp|udp|http --to ADDR:PORT [--count N] [--interval-ms M]
//! [--stdin] [--unconnected]` prints one line per exchange: `OK <name> <peer>` (the peer as the
//! socket API reports it: `getpeername` for TCP and connected UDP, the reply's source for
//! unconnected UDP) or `ERR <reason>`. TCP reuses one connection and connected UDP one socket
//! for all exchanges (a new one after a failure); HTTP opens a connection per request. With
//! `--stdin`, one exchange happens per line read from stdin instead of `--count`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(about = "A server that answers with its name, and its client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer each line of each TCP connection with the name.
    Tcp(ServeArgs),
    /// Answer each UDP datagram with the name.
    Udp(ServeArgs),
    /// Answer each HTTP request with the name as the body.
    Http(ServeArgs),
    /// Talk to one of the servers and print what answered.
    Ask(AskArgs),
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long)]
    listen: SocketAddrV4,
    #[arg(long)]
    name: String,
    /// Exit after this many seconds, so a forgotten server doesn't linger.
    #[arg(long, default_value_t = 600)]
    lifetime_s: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
    Http,
}

#[derive(Args)]
struct AskArgs {
    proto: Proto,
    #[arg(long)]
    to: SocketAddrV4,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    count: u32,
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Per-exchange timeout.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// One exchange per line read from stdin (until EOF) instead of `--count`.
    #[arg(long)]
    stdin: bool,
    /// UDP: use `sendto`/`recvfrom` on an unconnected socket.
    #[arg(long)]
    unconnected: bool,
}

/// Most concurrent connections a server handles; more are closed at once.
const MAX_CONNECTIONS: usize = 512;
/// Idle time after which a server drops a connection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest HTTP request head accepted.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tcp(a) => serve(a, serve_tcp),
        Command::Udp(a) => serve(a, serve_udp),
        Command::Http(a) => serve(a, serve_http),
        Command::Ask(a) => ask(a),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("keel-testsrv: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn serve(args: ServeArgs, run: fn(&ServeArgs) -> Result<()>) -> Result<bool> {
    let lifetime = Duration::from_secs(args.lifetime_s);
    std::thread::spawn(move || {
        std::thread::sleep(lifetime);
        std::process::exit(0);
    });
    run(&args)?;
    Ok(true)
}

fn ready(addr: SocketAddr) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {addr}")?;
    out.flush()?;
    Ok(())
}

/// Runs `handle` for each accepted connection on its own thread, at most `MAX_CONNECTIONS` at once.
fn accept_loop(listener: TcpListener, name: &str, handle: fn(TcpStream, &str)) -> Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    let name: Arc<str> = name.into();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue; // dropping closes it
        }
        let (active, name) = (active.clone(), name.clone());
        active.fetch_add(1, Ordering::Relaxed);
        std::thread::spawn(move || {
            // A timeout only fails on a zero duration.
            let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
            handle(stream, &name);
            active.fetch_sub(1, Ordering::Relaxed);
        });
    }
    Ok(())
}

fn serve_tcp(args: &ServeArgs) -> Result<()> {
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    ready(listener.local_addr()?)?;
    accept_loop(listener, &args.name, |stream, name| {
        let Ok(mut writer) = stream.try_clone() else {
            return;
        };
        for line in BufReader::new(stream).lines() {
            if line.is_err() || writeln!(writer, "{name}").is_err() {
                break;
            }
        }
    })
}

fn serve_http(args: &ServeArgs) -> Result<()> {
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    ready(listener.local_addr()?)?;
    accept_loop(listener, &args.name, |mut stream, name| {
        let mut head = Vec::new();
        let mut buf = [0u8; 2048];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
            if head.len() > MAX_REQUEST_HEAD {
                return;
            }
        }
        let body = format!("{name}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        // The client may have gone; nothing to do about it.
        let _ = stream.write_all(response.as_bytes());
    })
}

fn serve_udp(args: &ServeArgs) -> Result<()> {
    let socket =
        UdpSocket::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    ready(socket.local_addr()?)?;
    let answer = format!("{}\n", args.name);
    let mut buf = [0u8; 2048];
    loop {
        // Errors on one datagram (e.g. ICMP feedback) must not stop the server.
        if let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(answer.as_bytes(), from);
        }
    }
}

/// The client's state between exchanges.
enum Conn {
    None,
    Tcp(BufReader<TcpStream>),
    Udp(UdpSocket),
}

fn ask(args: AskArgs) -> Result<bool> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let mut conn = Conn::None;
    let mut all_ok = true;
    let mut report = |reply: Result<(String, SocketAddr)>| -> Result<()> {
        let mut out = std::io::stdout().lock();
        match reply {
            Ok((name, peer)) => writeln!(out, "OK {name} {peer}")?,
            Err(e) => {
                all_ok = false;
                writeln!(out, "ERR {}", format!("{e:#}").replace('\n', " "))?;
            }
        }
        out.flush()?;
        Ok(())
    };
    if args.stdin {
        for line in std::io::stdin().lock().lines().take(1_000_000) {
            line.context("reading stdin")?;
            report(exchange(&args, &mut conn, timeout))?;
        }
    } else {
        for i in 0..args.count {
            if i > 0 && args.interval_ms > 0 {
                std::thread::sleep(Duration::from_millis(args.interval_ms));
            }
            report(exchange(&args, &mut conn, timeout))?;
        }
    }
    Ok(all_ok)
}

fn exchange(args: &AskArgs, conn: &mut Conn, timeout: Duration) -> Result<(String, SocketAddr)> {
    let result = match args.proto {
        Proto::Tcp => exchange_tcp(args.to, conn, timeout),
        Proto::Udp if args.unconnected => exchange_udp_unconnected(args.to, timeout),
        Proto::Udp => exchange_udp(args.to, conn, timeout),
        Proto::Http => exchange_http(args.to, timeout),
    };
    if result.is_err() {
        *conn = Conn::None; // the next exchange starts afresh
    }
    result
}

fn connect(to: SocketAddrV4, timeout: Duration) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&to.into(), timeout).context("connect")?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

fn exchange_tcp(
    to: SocketAddrV4,
    conn: &mut Conn,
    timeout: Duration,
) -> Result<(String, SocketAddr)> {
    if !matches!(conn, Conn::Tcp(_)) {
        *conn = Conn::Tcp(BufReader::new(connect(to, timeout)?));
    }
    let Conn::Tcp(reader) = conn else {
        bail!("no TCP connection")
    };
    reader.get_mut().write_all(b"ping\n").context("send")?;
    let mut line = String::new();
    if reader.read_line(&mut line).context("receive")? == 0 {
        bail!("connection closed by peer");
    }
    Ok((line.trim().to_string(), reader.get_ref().peer_addr()?))
}

fn exchange_udp(
    to: SocketAddrV4,
    conn: &mut Conn,
    timeout: Duration,
) -> Result<(String, SocketAddr)> {
    if !matches!(conn, Conn::Udp(_)) {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(timeout))?;
        socket.connect(to).context("connect")?;
        *conn = Conn::Udp(socket);
    }
    let Conn::Udp(socket) = conn else {
        bail!("no UDP socket")
    };
    socket.send(b"ping\n").context("send")?;
    let mut buf = [0u8; 2048];
    let n = socket.recv(&mut buf).context("receive")?;
    Ok((
        String::from_utf8_lossy(&buf[..n]).trim().to_string(),
        socket.peer_addr()?,
    ))
}

fn exchange_udp_unconnected(to: SocketAddrV4, timeout: Duration) -> Result<(String, SocketAddr)> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(b"ping\n", to).context("send")?;
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf).context("receive")?;
    Ok((String::from_utf8_lossy(&buf[..n]).trim().to_string(), from))
}

fn exchange_http(to: SocketAddrV4, timeout: Duration) -> Result<(String, SocketAddr)> {
    let mut stream = connect(to, timeout)?;
    let peer = stream.peer_addr()?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n"
    )
    .context("send")?;
    let mut response = Vec::new();
    stream
        .take(MAX_REQUEST_HEAD as u64)
        .read_to_end(&mut response)
        .context("receive")?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("malformed HTTP response ({} bytes)", response.len());
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "unexpected status: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok((body.trim().to_string(), peer))
}

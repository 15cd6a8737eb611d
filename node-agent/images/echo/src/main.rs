//! `keel-echo`: the server of the `keel.local/echo` image. An HTTP/1.1 server (std only, one
//! thread per connection, keep-alive) that answers every request with `200 OK` and the name of
//! its pod as the body (`$POD_NAME`, else the hostname), so clients can tell which pod served
//! them. Listens on `0.0.0.0:$PORT` (default 8080).
//!
//! On SIGTERM it keeps serving for `$SHUTDOWN_DELAY_SECONDS` (default 1; endpoints removal
//! takes a moment to reach every node), then exits 0.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Idle keep-alive connections are closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Request heads larger than this are refused.
const MAX_HEAD: usize = 64 * 1024;

static TERMINATING: AtomicBool = AtomicBool::new(false);

unsafe extern "C" {
    /// libc's `signal(2)`; std links libc, and this is the only call we need from it.
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

extern "C" fn on_sigterm(_: i32) {
    TERMINATING.store(true, Ordering::SeqCst);
}

fn main() {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => match p.trim().parse() {
            Ok(p) => p,
            Err(_) => {
                eprintln!("keel-echo: PORT={p:?} is not a port number");
                std::process::exit(2);
            }
        },
        Err(_) => 8080,
    };
    let name = pod_name();
    let delay = std::env::var("SHUTDOWN_DELAY_SECONDS")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .unwrap_or(1.0);
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe. SIGTERM = 15.
    unsafe {
        signal(15, on_sigterm);
    }
    std::thread::spawn(move || {
        while !TERMINATING.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("keel-echo: SIGTERM, exiting in {delay}s");
        std::thread::sleep(Duration::from_secs_f64(delay));
        std::process::exit(0);
    });
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("keel-echo: listening on 0.0.0.0:{port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("keel-echo: {name} listening on 0.0.0.0:{port}");
    let name: Arc<str> = Arc::from(name);
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let name = Arc::clone(&name);
        let spawned = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || serve(stream, &name));
        if let Err(e) = spawned {
            eprintln!("keel-echo: cannot start a connection thread: {e}");
        }
    }
}

fn pod_name() -> String {
    if let Ok(n) = std::env::var("POD_NAME")
        && !n.is_empty()
    {
        return n;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

/// One request's head, as far as the server cares.
#[derive(Debug, PartialEq)]
struct Head {
    method: String,
    keep_alive: bool,
    content_length: usize,
    chunked: bool,
}

/// Parses a request head (request line and headers, without the final empty line).
fn parse_head(lines: &[String]) -> Option<Head> {
    let mut parts = lines.first()?.split_whitespace();
    let method = parts.next()?.to_string();
    let _path = parts.next()?;
    let version = parts.next().unwrap_or("HTTP/1.0");
    let mut keep_alive = version == "HTTP/1.1";
    let mut content_length = 0;
    let mut chunked = false;
    for line in &lines[1..] {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "connection" => {
                let v = v.to_ascii_lowercase();
                if v.contains("close") {
                    keep_alive = false;
                } else if v.contains("keep-alive") {
                    keep_alive = true;
                }
            }
            "content-length" => content_length = v.parse().ok()?,
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    Some(Head {
        method,
        keep_alive,
        content_length,
        chunked,
    })
}

fn serve(stream: TcpStream, name: &str) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = std::io::BufWriter::new(write_half);
    let mut reader = BufReader::new(stream);
    loop {
        let mut lines = Vec::new();
        let mut size = 0;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(n) => size += n,
            }
            if size > MAX_HEAD {
                let _ = respond(
                    &mut writer,
                    431,
                    "request head too large\n",
                    false,
                    name,
                    false,
                );
                return;
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            if line.is_empty() {
                if lines.is_empty() {
                    continue; // stray CRLF between requests
                }
                break;
            }
            lines.push(line);
        }
        let Some(head) = parse_head(&lines) else {
            let _ = respond(&mut writer, 400, "bad request\n", false, name, false);
            return;
        };
        if head.chunked {
            if discard_chunked(&mut reader).is_err() {
                return;
            }
        } else if head.content_length > 0 {
            let want = head.content_length as u64;
            match std::io::copy(&mut (&mut reader).take(want), &mut std::io::sink()) {
                Ok(n) if n == want => {}
                _ => return,
            }
        }
        let body = format!("{name}\n");
        let head_only = head.method == "HEAD";
        if respond(&mut writer, 200, &body, head.keep_alive, name, head_only).is_err()
            || !head.keep_alive
        {
            return;
        }
    }
}

fn discard_chunked(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let size_text = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        if size == 0 {
            // Trailers until the empty line.
            loop {
                let mut t = String::new();
                if reader.read_line(&mut t)? == 0 || t.trim().is_empty() {
                    return Ok(());
                }
            }
        }
        std::io::copy(&mut reader.take(size as u64 + 2), &mut std::io::sink())?;
    }
}

fn respond(
    w: &mut impl Write,
    status: u16,
    body: &str,
    keep_alive: bool,
    name: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Request Header Fields Too Large",
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    write!(
        w,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: {connection}\r\nX-Pod-Name: {name}\r\n\r\n{}",
        body.len(),
        if head_only { "" } else { body }
    )?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &[&str]) -> Vec<String> {
        s.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn http11_keeps_alive_unless_told_to_close() {
        let h = parse_head(&lines(&["GET / HTTP/1.1", "Host: x"])).unwrap();
        assert!(h.keep_alive);
        let h = parse_head(&lines(&["GET / HTTP/1.1", "Connection: close"])).unwrap();
        assert!(!h.keep_alive);
        let h = parse_head(&lines(&["GET / HTTP/1.0"])).unwrap();
        assert!(!h.keep_alive);
        let h = parse_head(&lines(&["GET / HTTP/1.0", "Connection: Keep-Alive"])).unwrap();
        assert!(h.keep_alive);
    }

    #[test]
    fn answers_with_the_name_over_one_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            serve(s, "pod-a");
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
        assert_eq!(out.matches("\r\n\r\npod-a\n").count(), 3, "{out}");
    }
}

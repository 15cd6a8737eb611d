//! Keel's own HTTP load generator (`keel-bench load`, run inside the client pod), used instead
//! of wrk for the connection and request rates so that every datapath, the direct baseline
//! included, sees the same traffic pattern: each new connection picks its target at random among
//! `--target`s. For a Service that is the VIP (the datapath spreads the connections); for the
//! direct baseline it is the three backend pod IPs, so the baseline spreads exactly like a
//! Service does, minus the datapath. (wrk can only fix one address per thread, which on two cores
//! made "direct" a better-than-possible static partition.)
//!
//! One tokio worker per core runs `--connections` tasks; each loops: connect, `GET /`, read the
//! full response (Content-Length framing), and with `--close` close and reconnect.
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct LoadArgs {
    pub targets: Vec<SocketAddrV4>,
    pub connections: u32,
    pub duration: Duration,
    pub close: bool,
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    errors: AtomicU64,
}

/// Runs the load and prints `requests_per_s=<f> requests=<n> errors=<n>`.
pub fn run(args: LoadArgs) -> Result<()> {
    if args.targets.is_empty() {
        bail!("no target");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let deadline = start + args.duration;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..args.connections {
            let targets = args.targets.clone();
            let counts = counts.clone();
            let close = args.close;
            tasks.push(tokio::spawn(async move {
                worker(i as u64, targets, close, deadline, &counts).await;
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let ok = counts.ok.load(Ordering::Relaxed);
    let errors = counts.errors.load(Ordering::Relaxed);
    println!(
        "requests_per_s={} requests={ok} errors={errors}",
        ok as f64 / elapsed
    );
    Ok(())
}

/// xorshift: cheap per-task randomness for the target choice.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn worker(
    seed: u64,
    targets: Vec<SocketAddrV4>,
    close: bool,
    deadline: Instant,
    counts: &Counts,
) {
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let request: &[u8] = if close {
        b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    } else {
        b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut conn: Option<TcpStream> = None;
    while Instant::now() < deadline {
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => {
                let to = targets[(next(&mut rng) % targets.len() as u64) as usize];
                match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(to)).await {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        conn.insert(s)
                    }
                    _ => {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
        };
        let ok =
            tokio::time::timeout(Duration::from_secs(2), exchange(stream, request, &mut buf)).await;
        match ok {
            Ok(Ok(())) => {
                counts.ok.fetch_add(1, Ordering::Relaxed);
                if close {
                    conn = None;
                }
            }
            _ => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
}

/// Sends one request and reads one complete response.
async fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> std::io::Result<()> {
    stream.write_all(request).await?;
    let mut have = 0usize;
    loop {
        let n = stream.read(&mut buf[have..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
        if let Some(end) = find(&buf[..have], b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap_or("");
            if !head.starts_with("HTTP/1.1 200") {
                return Err(std::io::Error::other("non-200 response"));
            }
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + len;
            while have < total {
                if total > buf.len() {
                    return Err(std::io::Error::other("response too large"));
                }
                let n = stream.read(&mut buf[have..total]).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                have += n;
            }
            return Ok(());
        }
        if have == buf.len() {
            return Err(std::io::Error::other("response headers too large"));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses the `requests_per_s=… requests=… errors=…` line.
pub fn parse(stdout: &str) -> Result<(f64, u64, u64)> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("requests_per_s="))
        .context("no result line")?;
    let mut rate = None;
    let mut requests = None;
    let mut errors = None;
    for part in line.split_whitespace() {
        match part.split_once('=') {
            Some(("requests_per_s", v)) => rate = v.parse::<f64>().ok(),
            Some(("requests", v)) => requests = v.parse::<u64>().ok(),
            Some(("errors", v)) => errors = v.parse::<u64>().ok(),
            _ => {}
        }
    }
    Ok((
        rate.context("rate")?,
        requests.context("requests")?,
        errors.context("errors")?,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_the_result_line() {
        let (r, n, e) = super::parse("requests_per_s=1234.5 requests=3700 errors=2\n").unwrap();
        assert_eq!((r, n, e), (1234.5, 3700, 2));
        assert!(super::parse("garbage").is_err());
    }
}

//! A functional check run inside the client pod before measuring: plain HTTP requests, one
//! connection each, must all get a `200`.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

const TIMEOUT: Duration = Duration::from_secs(2);

pub fn run(to: SocketAddrV4, count: u32) -> Result<()> {
    for i in 0..count {
        let mut stream = TcpStream::connect_timeout(&to.into(), TIMEOUT)
            .with_context(|| format!("request {}: connecting to {to}", i + 1))?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = Vec::new();
        stream
            .take(64 * 1024)
            .read_to_end(&mut response)
            .with_context(|| format!("request {}: reading the response", i + 1))?;
        if !response.starts_with(b"HTTP/1.1 200") {
            let head = String::from_utf8_lossy(&response);
            bail!(
                "request {}: unexpected response {:?}",
                i + 1,
                head.lines().next().unwrap_or("")
            );
        }
    }
    Ok(())
}

//! The CRI container log format and what `kubectl logs` asks of it: parsing records,
//! joining partial lines, `tailLines`, `sinceTime`, `timestamps` and `limitBytes`.
//!
//! A log file holds one record per line: `<RFC3339Nano> <stdout|stderr> <F|P> <text>`. `F`
//! ends a line of the container's output; `P` is a piece of a longer line, continued by the
//! next record (the shim splits long lines). A record still being written has no `\n` yet.
use std::io::{self, Read, Seek, SeekFrom};

use jiff::Timestamp;

/// Which output stream a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One parsed record (a file line without its `\n`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The timestamp as written (RFC 3339 with nanoseconds).
    pub timestamp: &'a str,
    pub stream: Stream,
    /// `P`: the line continues in the next record.
    pub partial: bool,
    pub text: &'a [u8],
}

/// Parses one record. Lines without a tag (an older format) are whole lines; lines that are not
/// records at all give `None`.
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (timestamp, rest) = split_field(line)?;
    let timestamp = std::str::from_utf8(timestamp).ok()?;
    let (stream, rest) = split_field(rest)?;
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let (partial, text) = match split_field(rest) {
        Some((b"F", text)) => (false, text),
        Some((b"P", text)) => (true, text),
        _ => match rest {
            b"F" => (false, &b""[..]),
            b"P" => (true, &b""[..]),
            other => (false, other),
        },
    };
    Some(Record {
        timestamp,
        stream,
        partial,
        text,
    })
}

fn split_field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = bytes.iter().position(|b| *b == b' ')?;
    Some((&bytes[..space], &bytes[space + 1..]))
}

/// Whether the record starting `head` (the first bytes of a file line) ends a line.
fn ends_line(head: &[u8]) -> bool {
    let head = head.split(|b| *b == b'\n').next().unwrap_or_default();
    parse_record(head).is_none_or(|r| !r.partial)
}

/// The file offset where the last `lines` whole lines of the log begin (a trailing line still
/// being written comes along without counting). Walks the file backwards, reading only record
/// heads, so a short tail of a long log costs little.
pub fn tail_offset<R: Read + Seek>(file: &mut R, len: u64, lines: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    const HEAD: usize = 64;
    if lines == 0 || len == 0 {
        return Ok(len);
    }
    let terminated_at_end = {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        last[0] == b'\n'
    };
    let mut full_lines = 0u64;
    // The start of the record after the one looked at: where the output would begin.
    let mut next_start = len;
    let mut chunk_end = len;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut head = [0u8; HEAD];
    loop {
        let chunk_start = chunk_end.saturating_sub(CHUNK);
        let size = (chunk_end - chunk_start) as usize;
        file.seek(SeekFrom::Start(chunk_start))?;
        file.read_exact(&mut buf[..size])?;
        // Record starts in this chunk: after each '\n', and the file start.
        let mut starts: Vec<u64> = buf[..size]
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| chunk_start + i as u64 + 1)
            .filter(|start| *start < len)
            .collect();
        if chunk_start == 0 {
            starts.insert(0, 0);
        }
        for &start in starts.iter().rev() {
            // A record without its '\n' yet (being written) comes along but doesn't count.
            let terminated = next_start < len || terminated_at_end;
            if terminated {
                file.seek(SeekFrom::Start(start))?;
                let n = read_up_to(file, &mut head)?;
                if ends_line(&head[..n]) {
                    full_lines += 1;
                    if full_lines > lines {
                        return Ok(next_start);
                    }
                }
            }
            next_start = start;
        }
        if chunk_start == 0 {
            return Ok(0);
        }
        chunk_end = chunk_start;
    }
}

fn read_up_to<R: Read>(file: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// What the client asked for (the `PodLogOptions` the agent implements).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    /// `tailLines`: only the last N lines (`None`: all).
    pub tail_lines: Option<u64>,
    /// `sinceSeconds` / `sinceTime`, resolved to an instant: older records are skipped.
    pub since: Option<Timestamp>,
    /// Prefix each line with its timestamp (RFC 3339 with nanoseconds, like the kubelet).
    pub timestamps: bool,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
}

/// Turns records into `kubectl logs` output: joins partial lines, filters by time, adds
/// timestamps and enforces the byte limit.
#[derive(Debug)]
pub struct Formatter {
    since: Option<Timestamp>,
    timestamps: bool,
    remaining: Option<u64>,
    /// The previous record ended a line (the next one starts a new line).
    at_line_start: bool,
}

impl Formatter {
    pub fn new(options: &LogOptions) -> Self {
        Formatter {
            since: options.since,
            timestamps: options.timestamps,
            remaining: options.limit_bytes,
            at_line_start: true,
        }
    }

    /// Whether `limitBytes` has been reached (nothing more will be written).
    pub fn is_done(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Appends the output of one file line (a record without its `\n`) to `out`.
    pub fn push_line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        if self.is_done() {
            return;
        }
        let Some(record) = parse_record(line) else {
            tracing::debug!(line = %String::from_utf8_lossy(line), "skipping a malformed log record");
            return;
        };
        let parsed = if self.timestamps || self.since.is_some() {
            record.timestamp.parse::<Timestamp>().ok()
        } else {
            None
        };
        if let (Some(since), Some(at)) = (self.since, parsed)
            && at < since
        {
            return;
        }
        let start = out.len();
        if self.timestamps && self.at_line_start {
            match parsed {
                Some(at) => out.extend_from_slice(rfc3339_nano(at).as_bytes()),
                None => out.extend_from_slice(record.timestamp.as_bytes()),
            }
            out.push(b' ');
        }
        out.extend_from_slice(record.text);
        if !record.partial {
            out.push(b'\n');
        }
        self.at_line_start = !record.partial;
        if let Some(remaining) = self.remaining.as_mut() {
            let written = (out.len() - start) as u64;
            if written >= *remaining {
                out.truncate(start + *remaining as usize);
                *remaining = 0;
            } else {
                *remaining -= written;
            }
        }
    }
}

/// An instant as Go's `time.RFC3339Nano` writes it in UTC (trailing zeros of the fraction
/// dropped), which is what the kubelet prints with `--timestamps`.
pub fn rfc3339_nano(at: Timestamp) -> String {
    let whole = at.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = at.subsec_nanosecond();
    if nanos == 0 {
        format!("{whole}Z")
    } else {
        let fraction = format!("{nanos:09}");
        format!("{whole}.{}Z", fraction.trim_end_matches('0'))
    }
}

/// Splits a growing byte stream into file lines: complete lines come out, the unterminated
/// rest waits for more input.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `data`, calling `line` with each complete line (without its `\n`).
    pub fn feed(&mut self, data: &[u8], mut line: impl FnMut(&[u8])) {
        let mut rest = data;
        while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
            if self.pending.is_empty() {
                line(&rest[..newline]);
            } else {
                self.pending.extend_from_slice(&rest[..newline]);
                line(&self.pending);
                self.pending.clear();
            }
            rest = &rest[newline + 1..];
        }
        self.pending.extend_from_slice(rest);
    }

    /// The unterminated rest (a record still being written), taken out.
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    const LOG: &str = "\
2024-05-01T10:00:00.000000001Z stdout F one
2024-05-01T10:00:01.5Z stderr F two
2024-05-01T10:00:02.123456789Z stdout P thr
2024-05-01T10:00:02.223456789Z stdout P e
2024-05-01T10:00:02.323456789Z stdout F e
2024-05-01T10:00:03Z stdout F four
";

    fn render(log: &str, options: &LogOptions) -> String {
        let mut formatter = Formatter::new(options);
        let mut out = Vec::new();
        let mut splitter = LineSplitter::default();
        splitter.feed(log.as_bytes(), |line| formatter.push_line(line, &mut out));
        let rest = splitter.take_rest();
        if !rest.is_empty() {
            formatter.push_line(&rest, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    fn tail(log: &str, lines: u64) -> String {
        let mut cursor = Cursor::new(log.as_bytes());
        let offset = tail_offset(&mut cursor, log.len() as u64, lines).unwrap();
        log[offset as usize..].to_string()
    }

    #[test]
    fn parses_records_of_both_streams_and_tags() {
        let r = parse_record(b"2024-05-01T10:00:00Z stderr P half a line").unwrap();
        assert_eq!(r.timestamp, "2024-05-01T10:00:00Z");
        assert_eq!(r.stream, Stream::Stderr);
        assert!(r.partial);
        assert_eq!(r.text, b"half a line");
        let r = parse_record(b"2024-05-01T10:00:00Z stdout F ").unwrap();
        assert_eq!((r.partial, r.text), (false, &b""[..]));
        let r = parse_record(b"2024-05-01T10:00:00Z stdout F").unwrap();
        assert_eq!((r.partial, r.text), (false, &b""[..]));
        // Untagged (older format): the rest is a whole line.
        let r = parse_record(b"2024-05-01T10:00:00Z stdout hello world").unwrap();
        assert_eq!((r.partial, r.text), (false, &b"hello world"[..]));
        assert!(parse_record(b"garbage").is_none());
        assert!(parse_record(b"2024-05-01T10:00:00Z stdin F x").is_none());
    }

    #[test]
    fn joins_partial_lines() {
        assert_eq!(
            render(LOG, &LogOptions::default()),
            "one\ntwo\nthree\nfour\n"
        );
    }

    #[test]
    fn timestamps_prefix_each_line_once() {
        let options = LogOptions {
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(
            render(LOG, &options),
            "2024-05-01T10:00:00.000000001Z one\n\
             2024-05-01T10:00:01.5Z two\n\
             2024-05-01T10:00:02.123456789Z three\n\
             2024-05-01T10:00:03Z four\n"
        );
    }

    #[test]
    fn since_skips_older_records() {
        let options = LogOptions {
            since: Some("2024-05-01T10:00:01.6Z".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(render(LOG, &options), "three\nfour\n");
    }

    #[test]
    fn limit_bytes_truncates_the_output() {
        let options = LogOptions {
            limit_bytes: Some(6),
            ..Default::default()
        };
        assert_eq!(render(LOG, &options), "one\ntw");
    }

    #[test]
    fn tail_counts_whole_lines() {
        assert_eq!(tail(LOG, 0), "");
        assert_eq!(tail(LOG, 1), "2024-05-01T10:00:03Z stdout F four\n");
        assert_eq!(
            render(&tail(LOG, 2), &LogOptions::default()),
            "three\nfour\n"
        );
        assert_eq!(
            render(&tail(LOG, 3), &LogOptions::default()),
            "two\nthree\nfour\n"
        );
        assert_eq!(tail(LOG, 4), LOG);
        assert_eq!(tail(LOG, 100), LOG);
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn tail_brings_a_line_still_being_written_without_counting_it() {
        let log = format!("{LOG}2024-05-01T10:00:04Z stdout P fi");
        assert_eq!(render(&tail(&log, 1), &LogOptions::default()), "four\nfi");
        let log = format!("{LOG}2024-05-01T10:00:04Z stdout F fi");
        assert_eq!(render(&tail(&log, 1), &LogOptions::default()), "four\nfi\n");
    }

    #[test]
    fn tail_crosses_chunk_boundaries() {
        let mut log = String::new();
        for i in 0..20_000 {
            log.push_str(&format!("2024-05-01T10:00:00Z stdout F line {i}\n"));
        }
        assert_eq!(
            render(&tail(&log, 3), &LogOptions::default()),
            "line 19997\nline 19998\nline 19999\n"
        );
        assert_eq!(tail(&log, 20_000), log);
    }

    #[test]
    fn splitter_holds_unterminated_records() {
        let mut lines = Vec::new();
        let mut splitter = LineSplitter::default();
        splitter.feed(b"a\nb", |l| lines.push(l.to_vec()));
        splitter.feed(b"c\n", |l| lines.push(l.to_vec()));
        splitter.feed(b"d", |l| lines.push(l.to_vec()));
        assert_eq!(lines, vec![b"a".to_vec(), b"bc".to_vec()]);
        assert_eq!(splitter.take_rest(), b"d");
    }

    #[test]
    fn formats_like_go_rfc3339_nano() {
        let at: Timestamp = "2024-05-01T10:00:02.120000000Z".parse().unwrap();
        assert_eq!(rfc3339_nano(at), "2024-05-01T10:00:02.12Z");
        let at: Timestamp = "2024-05-01T12:00:02+02:00".parse().unwrap();
        assert_eq!(rfc3339_nano(at), "2024-05-01T10:00:02Z");
    }
}

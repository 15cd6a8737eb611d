//! `GET /containerLogs/{namespace}/{pod}/{container}`: a container's log file as plain text,
//! optionally followed (`tail -f`) until the container exits or the client goes away.
use std::io::{self, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use jiff::{SignedDuration, Timestamp};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use super::cri_log::{self, Formatter, LineSplitter, LogOptions};
use super::http::{Body, ChannelBody, Query, Shared, bad_request, not_found, status};
use crate::runtime::{ContainerId, ContainerState, Runtime, RuntimeError};

/// How often a followed log is checked for growth.
const POLL: Duration = Duration::from_millis(100);
/// How many polls between checks of whether the container still runs.
const POLLS_PER_STATE_CHECK: u32 = 5;
const READ_CHUNK: usize = 64 * 1024;

/// Parses the `PodLogOptions` query parameters.
pub(crate) fn parse_options(query: &Query, now: Timestamp) -> Result<LogOptions, String> {
    let tail_lines = match query.int("tailLines")? {
        Some(n) if n >= 0 => Some(n as u64),
        _ => None,
    };
    let limit_bytes = match query.int("limitBytes")? {
        Some(n) if n <= 0 => return Err("limitBytes must be a positive integer".into()),
        Some(n) => Some(n as u64),
        None => None,
    };
    let since = match (query.int("sinceSeconds")?, query.get("sinceTime")) {
        (Some(_), Some(t)) if !t.is_empty() => {
            return Err("at most one of sinceTime or sinceSeconds may be specified".into());
        }
        (Some(seconds), _) if seconds <= 0 => {
            return Err("sinceSeconds must be a positive integer".into());
        }
        (Some(seconds), _) => Some(
            now.checked_sub(SignedDuration::from_secs(seconds))
                .unwrap_or(Timestamp::MIN),
        ),
        (None, Some(time)) if !time.is_empty() => Some(
            time.parse::<Timestamp>()
                .map_err(|e| format!("invalid sinceTime {time:?}: {e}"))?,
        ),
        _ => None,
    };
    Ok(LogOptions {
        follow: query.flag("follow")?,
        previous: query.flag("previous")?,
        tail_lines,
        since,
        timestamps: query.flag("timestamps")?,
        limit_bytes,
    })
}

/// Answers a log request.
pub(crate) async fn container_logs(
    shared: &Arc<Shared>,
    namespace: &str,
    pod: &str,
    container: &str,
    query: &Query,
) -> Response<Body> {
    let options = match parse_options(query, Timestamp::now()) {
        Ok(options) => options,
        Err(message) => return bad_request(message),
    };
    let Some(found) = shared.lookup.pod(namespace, pod).await else {
        return not_found(format!(
            "pod \"{pod}\" in namespace \"{namespace}\" is not running on this node"
        ));
    };
    let Some(spec) = found.containers.iter().find(|c| c.name == container) else {
        return not_found(format!(
            "container \"{container}\" not found in pod \"{pod}\""
        ));
    };
    let previous_missing = || {
        bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{pod}\" not found"
        ))
    };
    // The container whose liveness ends a follow (none for a previous attempt: it is over).
    let (path, live) = if options.previous {
        let Some(attempt) = spec.restart_count.checked_sub(1) else {
            return previous_missing();
        };
        (
            shared.runtime.log_path(&found.sandbox, container, attempt),
            None,
        )
    } else {
        let Some(id) = spec.id.clone() else {
            return bad_request(format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start"
            ));
        };
        (
            shared
                .runtime
                .log_path(&found.sandbox, container, spec.restart_count),
            Some(id),
        )
    };
    let file = match std::fs::File::open(&path) {
        Ok(file) => Some(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if options.previous {
                return previous_missing();
            }
            // Nothing written yet: empty, or followed until it appears.
            None
        }
        Err(e) => {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("opening the log {}: {e}", path.display()),
            );
        }
    };
    let (tx, rx) = mpsc::channel(16);
    let runtime = shared.runtime.clone();
    tokio::spawn(async move {
        if let Err(e) = stream(file, path.clone(), options, runtime, live, tx).await {
            tracing::warn!(path = %path.display(), error = %e, "streaming a container log failed");
        }
    });
    let mut response = Response::new(ChannelBody(rx).boxed_unsync());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Whether the container still runs (or is about to): a follow goes on while it does.
async fn still_running(runtime: &Arc<dyn Runtime>, id: &ContainerId) -> bool {
    match runtime.container_status(id).await {
        Ok(status) => matches!(
            status.state,
            ContainerState::Running | ContainerState::Created
        ),
        Err(RuntimeError::NotFound(_)) => false,
        Err(e) => {
            tracing::debug!(container = %id, error = %e, "container status while following its log");
            false
        }
    }
}

/// Sends the log's output into `tx` until the end (or, following, until the container exits
/// and the file stops growing, or the client disconnects).
async fn stream(
    file: Option<std::fs::File>,
    path: PathBuf,
    options: LogOptions,
    runtime: Arc<dyn Runtime>,
    live: Option<ContainerId>,
    tx: mpsc::Sender<Bytes>,
) -> io::Result<()> {
    let mut formatter = Formatter::new(&options);
    let mut splitter = LineSplitter::default();
    let mut file = match file {
        Some(file) => Some(open_at_tail(file, options.tail_lines).await?),
        None => None,
    };
    let mut buf = vec![0u8; READ_CHUNK];
    // Set once the container is seen stopped: one more read picks up its last words.
    let mut stopped = live.is_none();
    let mut polls = 0u32;
    loop {
        if let Some(file) = file.as_mut() {
            let n = file.read(&mut buf).await?;
            if n > 0 {
                let mut out = Vec::new();
                splitter.feed(&buf[..n], |line| formatter.push_line(line, &mut out));
                if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                    return Ok(());
                }
                if formatter.is_done() {
                    return Ok(());
                }
                continue;
            }
        }
        // At the end of what has been written.
        if !options.follow || stopped {
            let rest = splitter.take_rest();
            if !rest.is_empty() {
                let mut out = Vec::new();
                formatter.push_line(&rest, &mut out);
                let _ = tx.send(Bytes::from(out)).await;
            }
            return Ok(());
        }
        if tx.is_closed() {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
        polls += 1;
        if file.is_none() {
            match std::fs::File::open(&path) {
                Ok(opened) => file = Some(tokio::fs::File::from_std(opened)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if polls.is_multiple_of(POLLS_PER_STATE_CHECK)
            && let Some(id) = &live
            && !still_running(&runtime, id).await
        {
            stopped = true;
        }
    }
}

/// Opens the log at the start of its last `tail` lines (or at its start).
async fn open_at_tail(file: std::fs::File, tail: Option<u64>) -> io::Result<tokio::fs::File> {
    let (file, offset) = match tail {
        None => (file, 0),
        Some(lines) => tokio::task::spawn_blocking(move || {
            let mut file = file;
            let len = file.metadata()?.len();
            let offset = cri_log::tail_offset(&mut file, len, lines)?;
            Ok::<_, io::Error>((file, offset))
        })
        .await
        .map_err(io::Error::other)??,
    };
    let mut file = tokio::fs::File::from_std(file);
    file.seek(SeekFrom::Start(offset)).await?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(query: &str) -> Result<LogOptions, String> {
        let now: Timestamp = "2024-05-01T10:00:00Z".parse().unwrap();
        parse_options(&Query::parse(Some(query)), now)
    }

    #[test]
    fn parses_pod_log_options() {
        let o =
            options("follow=true&previous=1&tailLines=5&timestamps=true&limitBytes=100").unwrap();
        assert!(o.follow && o.previous && o.timestamps);
        assert_eq!((o.tail_lines, o.limit_bytes), (Some(5), Some(100)));
        let o = options("sinceSeconds=60").unwrap();
        assert_eq!(o.since, Some("2024-05-01T09:59:00Z".parse().unwrap()));
        let o = options("sinceTime=2024-05-01T09:00:00Z").unwrap();
        assert_eq!(o.since, Some("2024-05-01T09:00:00Z".parse().unwrap()));
        // kubectl's default --tail=-1 means everything.
        assert_eq!(options("tailLines=-1").unwrap().tail_lines, None);
        assert_eq!(options("").unwrap(), LogOptions::default());
        for bad in [
            "sinceSeconds=0",
            "sinceSeconds=5&sinceTime=2024-05-01T09:00:00Z",
            "sinceTime=yesterday",
            "limitBytes=0",
            "follow=maybe",
            "tailLines=x",
        ] {
            assert!(options(bad).is_err(), "{bad}");
        }
    }
}

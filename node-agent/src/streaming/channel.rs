//! The remote command protocol over WebSocket (`v4.channel.k8s.io`, `v5.channel.k8s.io`), as
//! client-go speaks it: every binary message starts with a channel byte (0 stdin, 1 stdout,
//! 2 stderr, 3 error, 4 resize); the error channel carries one `Status` as the command ends;
//! v5 adds the close signal `[255, <channel>]` (the client closed its stdin).
use serde::Deserialize;
use serde_json::json;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: "this side is done writing to the channel in the next byte".
pub const CLOSE: u8 = 255;

/// A negotiated subprotocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    V4,
    V5,
}

/// The subprotocols served, in the server's order (used in error messages).
pub const SUPPORTED: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V4 => "v4.channel.k8s.io",
            Protocol::V5 => "v5.channel.k8s.io",
        }
    }

    /// Picks the first protocol of the client's `Sec-WebSocket-Protocol` list (header values,
    /// each possibly comma-separated) that is served, as Kubernetes' wsstream does.
    pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Protocol> {
        offered
            .into_iter()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .find_map(|name| match name {
                "v5.channel.k8s.io" => Some(Protocol::V5),
                "v4.channel.k8s.io" => Some(Protocol::V4),
                _ => None,
            })
    }
}

/// A message for the client: the channel byte, then the data.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(data.len() + 1);
    message.push(channel);
    message.extend_from_slice(data);
    message
}

/// A terminal size sent on the resize channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// What a client message asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    Stdin(&'a [u8]),
    Resize(TerminalSize),
    /// v5 close signal for a channel (stdin is the only one a client writes).
    Close(u8),
    /// Anything else (unknown channels, malformed resizes): ignored, like Kubernetes does.
    Ignored,
}

/// Decodes one binary message from the client.
pub fn parse(message: &[u8], protocol: Protocol) -> Incoming<'_> {
    match message {
        [STDIN, data @ ..] => Incoming::Stdin(data),
        [RESIZE, json @ ..] => match serde_json::from_slice::<TerminalSize>(json) {
            Ok(size) => Incoming::Resize(size),
            Err(_) => Incoming::Ignored,
        },
        [CLOSE, channel] if protocol == Protocol::V5 => Incoming::Close(*channel),
        _ => Incoming::Ignored,
    }
}

/// The error-channel `Status` of a command that exited 0.
pub fn success_status() -> Vec<u8> {
    serde_json::to_vec(&json!({"metadata": {}, "status": "Success"})).unwrap_or_default()
}

/// The error-channel `Status` of a command that exited with `code` (client-go turns it into
/// the exit code of `kubectl exec`).
pub fn exit_status(code: i32) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: exit status {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    }))
    .unwrap_or_default()
}

/// The error-channel `Status` of a command that could not run (kubectl prints the message).
pub fn failure_status(message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "code": 500,
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn negotiates_in_the_clients_order() {
        assert_eq!(
            Protocol::negotiate(["v5.channel.k8s.io"]),
            Some(Protocol::V5)
        );
        assert_eq!(
            Protocol::negotiate(["v4.channel.k8s.io, v5.channel.k8s.io"]),
            Some(Protocol::V4)
        );
        assert_eq!(
            Protocol::negotiate(["base64.channel.k8s.io", "v5.channel.k8s.io"]),
            Some(Protocol::V5)
        );
        assert_eq!(Protocol::negotiate(["channel.k8s.io"]), None);
        assert_eq!(Protocol::negotiate([]), None);
    }

    #[test]
    fn decodes_client_messages() {
        assert_eq!(
            parse(&[0, b'h', b'i'], Protocol::V5),
            Incoming::Stdin(b"hi")
        );
        assert_eq!(parse(&[0], Protocol::V5), Incoming::Stdin(b""));
        assert_eq!(
            parse(b"\x04{\"Width\":80,\"Height\":24}", Protocol::V4),
            Incoming::Resize(TerminalSize {
                width: 80,
                height: 24
            })
        );
        assert_eq!(parse(b"\x04{bad", Protocol::V5), Incoming::Ignored);
        assert_eq!(parse(&[255, 0], Protocol::V5), Incoming::Close(0));
        // v4 has no close signal.
        assert_eq!(parse(&[255, 0], Protocol::V4), Incoming::Ignored);
        assert_eq!(parse(&[], Protocol::V5), Incoming::Ignored);
        assert_eq!(parse(&[7, 1], Protocol::V5), Incoming::Ignored);
    }

    #[test]
    fn frames_and_statuses() {
        assert_eq!(frame(STDOUT, b"hi"), vec![1, b'h', b'i']);
        assert_eq!(frame(ERROR, b""), vec![3]);
        let ok: Value = serde_json::from_slice(&success_status()).unwrap();
        assert_eq!(ok["status"], "Success");
        let failed: Value = serde_json::from_slice(&exit_status(3)).unwrap();
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        let broken: Value = serde_json::from_slice(&failure_status("no such file")).unwrap();
        assert_eq!(broken["message"], "no such file");
    }
}

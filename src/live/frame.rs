//! The SSE wire format, rendered once: a live event's frame is shared by every client of its
//! topology (a reference count, not a copy per client).

use std::fmt::Write as _;

use bytes::Bytes;

/// A frame of `event`, `id` (when given) and `data` lines. `data` is split into one `data:`
/// line per line, as the format requires; carriage returns (JSON whitespace only, since JSON
/// escapes them inside strings) are dropped.
pub fn event(name: &str, id: Option<&str>, data: &str) -> Bytes {
    let mut out = String::with_capacity(name.len() + data.len() + 48);
    let _ = writeln!(out, "event: {name}");
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.extend(line.chars().filter(|c| *c != '\r'));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// A comment frame with a reconnect hint (`retry:` in milliseconds).
pub fn retry_comment(retry_ms: u128, comment: &str) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\n: {comment}\n\n"))
}

/// A keepalive: a comment line, ignored by EventSource, that keeps proxies from timing out.
pub const KEEPALIVE: Bytes = Bytes::from_static(b":\n\n");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_data_becomes_one_data_line_each() {
        assert_eq!(
            event("status", Some("7.ab"), "{\"a\":\r\n 1}"),
            "event: status\nid: 7.ab\ndata: {\"a\":\ndata:  1}\n\n"
        );
        assert_eq!(event("x", None, "{}"), "event: x\ndata: {}\n\n");
        assert_eq!(
            retry_comment(2000, "connected"),
            "retry: 2000\n: connected\n\n"
        );
    }
}

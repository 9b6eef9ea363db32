//! The test registry's HTTP/1.1: one request a connection, read up to the
//! end of its head (a registry `GET`/`HEAD` has no body), answered with
//! `Connection: close`. Enough for the runtimes' registry clients, no more.

use std::collections::HashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest request head read; a longer one is dropped.
const MAX_HEAD: usize = 64 * 1024;

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// A request's head.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// Header values by lowercase name.
    pub headers: HashMap<String, String>,
}

impl Request {
    /// The value of header `name` (lowercase), or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// Reads one request head; `None` when the peer closed first, sent too
/// much, or opened with a TLS handshake on plain HTTP (closed at once so
/// that a client trying TLS first, as the Docker Engine does, falls back to
/// HTTP without waiting for its handshake timeout).
pub(crate) async fn read_request<IO: AsyncRead + Unpin>(conn: &mut IO) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.first() == Some(&TLS_HANDSHAKE) || buf.len() > MAX_HEAD {
            return None;
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Request { method, target, headers })
}

/// A response: status line text, headers, body.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    /// E.g. `200 OK`.
    pub status: &'static str,
    /// Headers besides `Content-Length`, `Connection` and
    /// `Docker-Distribution-API-Version`, which every response carries.
    pub headers: Vec<(&'static str, String)>,
    /// The body (its length is sent also for `HEAD`, the bytes are not).
    pub body: Vec<u8>,
}

impl Response {
    /// A response with no headers of its own.
    pub fn new(status: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response { status, headers: Vec::new(), body: body.into() }
    }

    /// With header `name: value`.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// A registry error body (`{"errors":[{"code":..}]}`) as JSON.
    pub fn error(status: &'static str, code: &str, message: &str) -> Self {
        let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] }).to_string();
        Response::new(status, body).header("Content-Type", "application/json")
    }

    /// The bytes on the wire; without the body for a `HEAD` request.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {}\r\nContent-Length: {}\r\nConnection: close\r\nDocker-Distribution-API-Version: registry/2.0\r\n",
            self.status,
            self.body.len()
        );
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Writes `resp` and closes the connection; write errors are the peer's
/// business (it hung up).
pub(crate) async fn write_response<IO: AsyncWrite + Unpin>(conn: &mut IO, resp: &Response, head_only: bool) {
    let _ = conn.write_all(&resp.to_bytes(head_only)).await;
    let _ = conn.shutdown().await;
}

/// Decodes `%XX` escapes and `+` (a space) in a query value.
pub(crate) fn query_unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The values of `name` in query string `query` (`a=1&b=2`), unescaped.
pub(crate) fn query_values(query: &str, name: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| query_unescape(v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_unescaped() {
        let q = "service=test-registry&scope=repository%3Ateam%2Fbusybox%3Apull&scope=a+b&bad=%zz%4";
        assert_eq!(query_values(q, "service"), ["test-registry"]);
        assert_eq!(query_values(q, "scope"), ["repository:team/busybox:pull", "a b"]);
        assert_eq!(query_values(q, "bad"), ["%zz%4"]);
        assert!(query_values(q, "none").is_empty());
    }

    #[tokio::test]
    async fn a_request_head_is_parsed_and_a_tls_hello_is_dropped() {
        let mut input: &[u8] = b"GET /v2/a/manifests/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic abc\r\n\r\n";
        let r = read_request(&mut input).await.expect("a request");
        assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "/v2/a/manifests/1"));
        assert_eq!(r.header("authorization"), "Basic abc");
        let mut hello: &[u8] = &[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5];
        assert!(read_request(&mut hello).await.is_none());
        let resp = Response::new("200 OK", "body").header("X-A", "b");
        let text = String::from_utf8(resp.to_bytes(true)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n") && text.ends_with("X-A: b\r\n\r\n"),
            "{text}"
        );
    }
}

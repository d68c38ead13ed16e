//! A minimal HTTP/1.1 client for Firecracker's API on its Unix socket: one
//! request per connection (`Connection: close`), a JSON body or none, the
//! status and body back. Enough for an API whose answers are small and
//! whose server closes or sizes every response.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long one API call may take (a snapshot of a large guest takes a
/// while to write).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The largest answer read; Firecracker's are a few hundred bytes.
const MAX_BODY: usize = 1 << 20;

/// An answer: the status code and the body (empty for 204).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Sends `method path` with `body` (JSON) to the server on `socket`.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(CALL_TIMEOUT))?;
    stream.set_write_timeout(Some(CALL_TIMEOUT))?;
    stream.write_all(encode(method, path, body).as_bytes())?;
    read_response(&mut BufReader::new(stream))
}

/// The request's bytes.
pub fn encode(method: &str, path: &str, body: Option<&str>) -> String {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    match body {
        Some(b) => req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => req.push_str("\r\n"),
    }
    req
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Reads one response: status line, headers, then `Content-Length` bytes
/// (or up to the end of the stream when there is none).
pub fn read_response(r: &mut impl BufRead) -> std::io::Result<Response> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .filter(|_| line.starts_with("HTTP/1."))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid(format!("not an HTTP status line: {:?}", line.trim())))?;
    let mut length: Option<usize> = None;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                let n = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid(format!("bad Content-Length {value:?}")))?;
                length = Some(n);
            }
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) if n > MAX_BODY => return Err(invalid(format!("answer of {n} bytes"))),
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        None if status == 204 => {}
        None => {
            r.take(MAX_BODY as u64).read_to_end(&mut body)?;
        }
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_their_length() {
        let r = encode(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#),
        );
        assert!(r.starts_with("PUT /actions HTTP/1.1\r\n"));
        assert!(r.contains("Content-Length: 31\r\n\r\n{\"action"));
        assert!(encode("GET", "/", None).ends_with("Connection: close\r\n\r\n"));
    }

    #[test]
    fn responses_parse_with_and_without_bodies() {
        let mut ok = "HTTP/1.1 204 No Content\r\nServer: Firecracker API\r\n\r\n".as_bytes();
        assert_eq!(
            read_response(&mut ok).unwrap(),
            Response {
                status: 204,
                body: String::new()
            }
        );
        let fault =
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 22\r\n\r\n{\"fault_message\":\"x\"}\n";
        let r = read_response(&mut fault.as_bytes()).unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.body, "{\"fault_message\":\"x\"}\n");
        assert!(read_response(&mut "garbage\r\n\r\n".as_bytes()).is_err());
    }
}

//! A minimal QMP client: greeting, capabilities negotiation, one command.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::VmmError;

/// Sends one QMP command and returns its `return` value.
pub fn execute(socket: &Path, command: &str, arguments: Value) -> Result<Value, VmmError> {
    let err = |e: std::io::Error| VmmError::Control(format!("{}: {e}", socket.display()));
    let stream = UnixStream::connect(socket).map_err(err)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(err)?;
    let mut writer = stream.try_clone().map_err(err)?;
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader)?; // greeting
    send(&mut writer, &json!({"execute": "qmp_capabilities"})).map_err(err)?;
    read_reply(&mut reader)?;
    let mut msg = json!({ "execute": command });
    if !arguments.is_null() {
        msg["arguments"] = arguments;
    }
    send(&mut writer, &msg).map_err(err)?;
    read_reply(&mut reader)
}

fn send(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    w.write_all(line.as_bytes())
}

/// Reads until a greeting, a return or an error; skips asynchronous events.
fn read_reply(r: &mut impl BufRead) -> Result<Value, VmmError> {
    loop {
        let mut line = String::new();
        let n = r
            .read_line(&mut line)
            .map_err(|e| VmmError::Control(format!("reading QMP: {e}")))?;
        if n == 0 {
            return Err(VmmError::Control("QMP connection closed".into()));
        }
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| VmmError::Control(format!("bad QMP message: {e}")))?;
        if let Some(e) = v.get("error") {
            let desc = e["desc"].as_str().unwrap_or("error").to_string();
            let missing = e["class"] == "DeviceNotFound"
                || desc.starts_with("Failed to find node")
                || desc.contains("not found");
            return Err(if missing {
                VmmError::NotFound(desc)
            } else {
                VmmError::Control(desc)
            });
        }
        if let Some(ret) = v.get("return") {
            return Ok(ret.clone());
        }
        if v.get("QMP").is_some() {
            return Ok(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_skip_events_and_surface_errors() {
        let input = b"{\"event\":\"STOP\"}\n{\"return\":{\"status\":\"running\"}}\n";
        let v = read_reply(&mut &input[..]).unwrap();
        assert_eq!(v["status"], "running");
        let input = b"{\"error\":{\"class\":\"GenericError\",\"desc\":\"no such device\"}}\n";
        let e = read_reply(&mut &input[..]).unwrap_err();
        assert!(e.to_string().contains("no such device"));
        assert!(read_reply(&mut &b""[..]).is_err());
        let input = b"{\"error\":{\"class\":\"GenericError\",\"desc\":\"Failed to find node with node-name='n'\"}}\n";
        assert!(matches!(
            read_reply(&mut &input[..]),
            Err(VmmError::NotFound(_))
        ));
        let input =
            b"{\"error\":{\"class\":\"DeviceNotFound\",\"desc\":\"Device 'dev-x' not found\"}}\n";
        assert!(matches!(
            read_reply(&mut &input[..]),
            Err(VmmError::NotFound(_))
        ));
    }
}

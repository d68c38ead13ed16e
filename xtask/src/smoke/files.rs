//! Everyday verbs as a user checks them: `vm cp` of a real tree in and
//! back out, compared byte for byte and mode for mode; `vm exec` with
//! `-w`, `-e`, `-i` and `-t`; and `banger mcp` driven by the official MCP
//! Python SDK's client (see `mcp.rs`).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;

use anyhow::{ensure, Context};

use super::{note, Env, Outcome};

/// An entry's kind (`file`, `dir`, `link`), mode, and content or link
/// target.
type Entry = (String, u32, Vec<u8>);

/// What a user compares of a tree: each entry, by relative path.
fn snapshot(root: &Path) -> anyhow::Result<BTreeMap<String, Entry>> {
    let mut all = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = e?.path();
            let rel = path.strip_prefix(root)?.display().to_string();
            let meta = std::fs::symlink_metadata(&path)?;
            let mode = meta.permissions().mode() & 0o7777;
            let entry = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)?;
                ("link".into(), 0, target.display().to_string().into_bytes())
            } else if meta.is_dir() {
                stack.push(path.clone());
                ("dir".into(), mode, Vec::new())
            } else {
                ("file".into(), mode, std::fs::read(&path)?)
            };
            all.insert(rel, entry);
        }
    }
    Ok(all)
}

/// A tree with a symlink, an executable, a private file, an empty
/// directory and a 12 MB file of varied bytes.
fn make_tree(root: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join("sub/empty"))?;
    let set = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
    std::fs::write(root.join("run.sh"), "#!/bin/sh\necho ran\n")?;
    set(&root.join("run.sh"), 0o755)?;
    std::fs::write(root.join("sub/secret"), "only mine\n")?;
    set(&root.join("sub/secret"), 0o600)?;
    std::os::unix::fs::symlink("../run.sh", root.join("sub/link"))?;
    let mut big = Vec::with_capacity(12 << 20);
    let mut x: u32 = 0x1234_5678;
    while big.len() < 12 << 20 {
        // xorshift: bytes that no compression or sparse trick flattens.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        big.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(root.join("big.bin"), &big)?;
    set(&root.join("big.bin"), 0o640)?;
    set(&root.join("sub"), 0o750)?;
    Ok(())
}

pub fn cp(env: &Env, vm: &str) -> anyhow::Result<Outcome> {
    let work = env.dir.join("cp-smoke");
    let _ = std::fs::remove_dir_all(&work);
    let tree = work.join("tree");
    make_tree(&tree)?;
    let guest = "/tmp/banger-cp-smoke";
    env.sh(vm, &format!("rm -rf {guest}"))?;
    let host = |p: &Path| p.display().to_string();

    // In: a new path gets the tree itself.
    env.ok(&["vm", "cp", &host(&tree), &format!("{vm}:{guest}")])?;
    let listing = env.sh(
        vm,
        &format!(
            "cd {guest} && stat -c '%n %a %F' run.sh sub sub/secret big.bin && readlink sub/link && ./run.sh && sha256sum big.bin"
        ),
    )?;
    for want in [
        "run.sh 755 regular file",
        "sub 750 directory",
        "sub/secret 600 regular file",
        "big.bin 640 regular file",
        "../run.sh",
        "ran",
    ] {
        ensure!(
            listing.contains(want),
            "the guest lacks {want:?}:\n{listing}"
        );
    }
    let host_sum = std::process::Command::new("sha256sum")
        .arg(tree.join("big.bin"))
        .output()?;
    let host_sum = String::from_utf8_lossy(&host_sum.stdout);
    let sum = host_sum.split_whitespace().next().unwrap_or("?");
    ensure!(
        listing.contains(sum),
        "big.bin differs in the guest:\n{listing}"
    );

    // Out: back into a new host path, then compared whole.
    let back = work.join("back");
    env.ok(&["vm", "cp", &format!("{vm}:{guest}"), &host(&back)])?;
    let (want, got) = (snapshot(&tree)?, snapshot(&back)?);
    ensure!(
        want.keys().eq(got.keys()),
        "entries differ: {:?} vs {:?}",
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (path, w) in &want {
        let g = &got[path];
        ensure!(
            (&w.0, w.1) == (&g.0, g.1),
            "{path}: {} {:o} came back as {} {:o}",
            w.0,
            w.1,
            g.0,
            g.1
        );
        ensure!(w.2 == g.2, "{path}: content differs after the round trip");
    }

    // Into an existing directory: the entry goes inside; DIR/. merges.
    let into = work.join("into");
    std::fs::create_dir(&into)?;
    env.ok(&["vm", "cp", &format!("{vm}:{guest}/run.sh"), &host(&into)])?;
    ensure!(into.join("run.sh").is_file(), "run.sh did not land inside");
    env.ok(&["vm", "cp", &format!("{vm}:{guest}/sub/."), &host(&into)])?;
    ensure!(
        into.join("secret").is_file() && into.join("empty").is_dir(),
        "sub/. did not merge its contents"
    );
    env.ok(&[
        "vm",
        "cp",
        &host(&tree.join("run.sh")),
        &format!("{vm}:{guest}/sub/"),
    ])?;
    env.sh(vm, &format!("test -x {guest}/sub/run.sh"))?;

    // Mistakes: one line, nothing made.
    env.fails(
        &[
            "vm",
            "cp",
            &format!("{vm}:/no/such"),
            &host(&work.join("x")),
        ],
        "no such file or directory",
    )?;
    ensure!(!work.join("x").exists(), "a failed copy out left a file");
    ensure!(
        std::fs::read_dir(&work)?
            .all(|e| e.is_ok_and(|e| !e.file_name().to_string_lossy().starts_with(".banger-cp"))),
        "a failed copy out left its staging directory"
    );
    env.fails(
        &["vm", "cp", &host(&tree), &format!("{vm}:/no/such/dir/x")],
        "no such directory",
    )?;
    env.fails(
        &[
            "vm",
            "cp",
            &host(&work.join("missing")),
            &format!("{vm}:/tmp"),
        ],
        "missing",
    )?;
    env.fails(
        &["vm", "cp", "/etc/hostname", "smoke-nope:/tmp"],
        "no VM named",
    )?;
    env.fails(&["vm", "cp", "/etc/hostname", "/tmp/x"], "VM:PATH")?;
    let left = env.sh(vm, "ls -a /tmp / | grep '^[.]banger-cp[.]' || true")?;
    ensure!(
        left.trim().is_empty(),
        "the guest keeps staging directories: {left}"
    );
    env.sh(vm, &format!("rm -rf {guest}"))?;
    let _ = std::fs::remove_dir_all(&work);
    note("12 MB file, symlink, executable, 0600 and 0750 entries: in and out unchanged");
    Ok(Outcome::Pass)
}

/// `banger ARGS` with `input` on stdin; (exit code, stdout, stderr).
fn with_stdin(env: &Env, args: &[&str], input: &[u8]) -> anyhow::Result<(i32, String, String)> {
    let mut child = env
        .command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut pipe = child.stdin.take().context("stdin")?;
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = pipe.write_all(&data);
    });
    let out = child.wait_with_output()?;
    let _ = feeder.join();
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

pub fn exec_options(env: &Env, vm: &str) -> anyhow::Result<Outcome> {
    // -w and -e: values stay data, whatever they hold.
    let tricky = "x y;$(touch /tmp/pwned)'\"`id`";
    let out = env.ok(&[
        "vm",
        "exec",
        "-w",
        "/etc",
        "-e",
        "A=1",
        "-e",
        &format!("B={tricky}"),
        vm,
        "--",
        "sh",
        "-c",
        "pwd; printf '%s|%s\\n' \"$A\" \"$B\"",
    ])?;
    ensure!(out == format!("/etc\n1|{tricky}\n"), "-w/-e gave {out:?}");
    env.sh(vm, "test ! -e /tmp/pwned")
        .context("an -e value ran as code in the guest")?;
    let (code, _, err) = with_stdin(
        env,
        &["vm", "exec", "-w", "/no/such", vm, "--", "true"],
        b"",
    )?;
    ensure!(
        code == 126 && err.contains("no such directory"),
        "missing -w: {code} {err}"
    );
    let (code, _, _) = with_stdin(
        env,
        &["vm", "exec", "-w", "/tmp", vm, "--", "sh", "-c", "exit 5"],
        b"",
    )?;
    ensure!(code == 5, "exit code through -w: {code}");

    // -i: stdin streams through (5 MB, hashed on both sides); without -i
    // the command reads nothing.
    let data: Vec<u8> = (0..5u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let (code, out, err) = with_stdin(env, &["vm", "exec", "-i", vm, "--", "wc", "-c"], &data)?;
    ensure!(
        code == 0 && out.trim() == data.len().to_string(),
        "-i: {code} {out:?} {err}"
    );
    let (code, out, _) = with_stdin(env, &["vm", "exec", vm, "--", "wc", "-c"], &data)?;
    ensure!(
        code == 0 && out.trim() == "0",
        "without -i the command read {out:?}"
    );

    // -t: a terminal, as `tty` sees it; without it, none.
    let (code, out, _) = with_stdin(env, &["vm", "exec", "-t", vm, "--", "tty"], b"")?;
    ensure!(
        code == 0 && out.trim().starts_with("/dev/pts/"),
        "-t: {code} {out:?}"
    );
    let (code, out, _) = with_stdin(env, &["vm", "exec", vm, "--", "tty"], b"")?;
    ensure!(
        code != 0 && out.contains("not a tty"),
        "no -t: {code} {out:?}"
    );

    env.fails(
        &["vm", "exec", "-e", "1BAD=x", vm, "--", "true"],
        "not a variable name",
    )?;
    note("-w, -e (quotes, $(), backticks kept as data), -i (5 MB), -t, exit codes 5 and 126");
    Ok(Outcome::Pass)
}

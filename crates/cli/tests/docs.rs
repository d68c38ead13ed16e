//! `banger completions` and `banger man` name every verb: run the built
//! binary as a user would, and check its outputs against the verb list of
//! the README's table.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::process::Command;

/// Every verb of the README's table, plus the helpers.
const VERBS: &[&str] = &[
    "banger daemon",
    "banger vm create",
    "banger vm start",
    "banger vm stop",
    "banger vm restart",
    "banger vm kill",
    "banger vm delete",
    "banger vm prune",
    "banger vm list",
    "banger vm show",
    "banger vm ports",
    "banger vm logs",
    "banger vm ssh",
    "banger vm exec",
    "banger vm cp",
    "banger workspace prepare",
    "banger workspace export",
    "banger image build",
    "banger image list",
    "banger image rm",
    "banger image create",
    "banger vm set-ttl",
    "banger ssh-config",
    "banger ops",
    "banger doctor",
    "banger version",
    "banger completions",
    "banger man",
    "banger mcp",
];

fn banger(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_banger"))
        .args(args)
        .output()
        .expect("running banger");
    assert!(
        out.status.success(),
        "banger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn leaf(verb: &str) -> &str {
    verb.rsplit(' ').next().unwrap_or(verb)
}

#[test]
fn the_man_page_lists_exactly_the_verbs() {
    let page = banger(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH banger 1"),
        "{page}"
    );
    let listed: Vec<String> = page
        .lines()
        .filter_map(|l| l.strip_prefix("\\fB")?.strip_suffix("\\fR"))
        .filter(|l| l.starts_with("banger "))
        .map(|l| l.replace("\\-", "-"))
        .collect();
    let expected: Vec<String> = VERBS.iter().map(|v| v.to_string()).collect();
    let mut sorted = listed.clone();
    sorted.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(
        sorted, want,
        "the man page's COMMANDS and the README's verbs differ"
    );
    // groff renders it (a man page a user can read).
    let (_dir, file) = write_tmp(&page);
    if let Ok(out) = Command::new("groff")
        .args(["-man", "-Tutf8", "-P-cbou"])
        .stdin(std::fs::File::open(file).unwrap())
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(text.contains("banger vm cp"), "{text}");
    } else {
        eprintln!("skipped the groff rendering: groff is not installed");
    }
}

/// `text` in a file of a fresh temporary directory (removed on drop).
fn write_tmp(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banger.1");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn man_dir_writes_a_page_per_verb() {
    let dir = tempfile::tempdir().unwrap();
    banger(&["man", "--dir", dir.path().to_str().unwrap()]);
    for verb in VERBS {
        let page = dir.path().join(format!("{}.1", verb.replace(' ', "-")));
        assert!(page.exists(), "no page {}", page.display());
    }
}

#[test]
fn every_shell_completes_every_verb() {
    for shell in ["bash", "zsh", "fish"] {
        let script = banger(&["completions", shell]);
        for verb in VERBS {
            assert!(
                script.contains(leaf(verb)),
                "{shell} completions lack {verb}"
            );
        }
        for flag in ["workdir", "env", "interactive", "tty", "json"] {
            // bash and zsh write `--flag`, fish `-l flag`.
            let written = [format!("--{flag}"), format!("-l {flag}")];
            assert!(
                written.iter().any(|w| script.contains(w.as_str())),
                "{shell} completions lack --{flag}"
            );
        }
    }
}

#[test]
fn bash_loads_the_completions_and_completes_vm_verbs() {
    let script = banger(&["completions", "bash"]);
    let (_dir, path) = write_tmp(&script);
    // The completion function, called as bash calls it for `banger vm c<TAB>`.
    let probe = format!(
        "source {}; COMP_WORDS=(banger vm c); COMP_CWORD=2; COMP_LINE='banger vm c'; COMP_POINT=11; \
         _banger banger c vm; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let out = Command::new("bash").arg("-c").arg(&probe).output();
    let Ok(out) = out else {
        eprintln!("skipped: bash is not installed");
        return;
    };
    let words = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for w in ["create", "cp"] {
        assert!(
            words.lines().any(|l| l == w),
            "`banger vm c<TAB>` gave {words:?}"
        );
    }
}

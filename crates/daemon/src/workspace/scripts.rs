//! Shell scripts run in the guest over SSH (fed on stdin to `sh -s`). Each
//! is idempotent where it can be, and exits non-zero with a message on
//! stderr when it cannot do its job.

/// Finds the workspace drive by its serial (hot-plugged drives take a few
/// seconds to appear under emulation). A backend without hot-plug reserves
/// slots at boot and names them on the kernel command line
/// (`banger.drive.SERIAL=/dev/vdX`); such a slot holds a one-sector
/// placeholder until the drive's file is swapped in, and its cached blocks
/// are the placeholder's, so they are dropped first.
///
/// `find_drive SERIAL 0` waits as long as it takes (the drive is attached
/// once the host has packed it), writing a dot to stderr every second: when
/// the host gives up and its SSH session ends, the next dot kills the
/// script (SIGPIPE) before it has made anything.
const FIND_DRIVE: &str = r#"
find_drive() {
    slot=$(tr ' ' '\n' < /proc/cmdline | sed -n "s|^banger\.drive\.$1=||p")
    tries=${2:-600}
    i=0
    while [ "$tries" -eq 0 ] || [ $i -lt "$tries" ]; do
        if [ "$tries" -eq 0 ] && [ $((i % 10)) -eq 0 ]; then
            echo . >&2
        fi
        if [ -n "$slot" ]; then
            if [ "$(cat "/sys/block/${slot##*/}/size" 2>/dev/null || echo 0)" -gt 1 ]; then
                blockdev --flushbufs "$slot" 2>/dev/null || true
                echo "$slot"
                return 0
            fi
        else
            for d in /sys/block/vd*; do
                if [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ]; then
                    echo "/dev/${d##*/}"
                    return 0
                fi
            done
        fi
        sleep 0.1
        i=$((i + 1))
    done
    echo "banger: no drive with serial $1 appeared" >&2
    return 1
}
"#;

/// Exits 4 when /root/repo exists already (a second prepare is refused);
/// the first step of the scripts that make a workspace.
pub const CHECK_FREE: &str = r#"
if [ -e /root/repo ] || [ -L /root/repo ]; then
    echo "banger: /root/repo already exists in the guest" >&2
    exit 4
fi
"#;

/// The exit status of [`CHECK_FREE`] refusing.
pub const EXIT_TAKEN: i32 = 4;

/// The first mount of a new workspace, started while the host still packs
/// it: [`CHECK_FREE`], then [`mount_overlay`] once the drive appears,
/// however long that takes. Killed while it waits, it has made nothing.
pub fn first_mount_overlay(serial: &str) -> String {
    overlay_script(serial, true)
}

/// Mounts the overlay: lower = the workspace image, upper and work on the
/// guest's own disk. Idempotent (run again after every boot).
pub fn mount_overlay(serial: &str) -> String {
    overlay_script(serial, false)
}

fn overlay_script(serial: &str, first: bool) -> String {
    let (check, tries) = if first { (CHECK_FREE, 0) } else { ("", 600) };
    format!(
        r#"set -eu
{check}
{FIND_DRIVE}
modprobe overlay 2>/dev/null || true
dev=$(find_drive {serial} {tries})
base=/var/lib/banger/workspace
mkdir -p "$base/lower" "$base/upper" "$base/work" /root/repo
mountpoint -q "$base/lower" || mount -t ext4 -o ro,noload "$dev" "$base/lower"
mountpoint -q /root/repo || mount -t overlay overlay -o "lowerdir=$base/lower/repo,upperdir=$base/upper,workdir=$base/work" /root/repo
"#
    )
}

/// Undoes a failed `mount_overlay`: unmounts what it mounted and removes
/// what it created, so the VM is as before the prepare.
pub const UNDO_OVERLAY: &str = r#"
base=/var/lib/banger/workspace
mountpoint -q /root/repo && umount /root/repo
mountpoint -q "$base/lower" && umount "$base/lower"
rmdir /root/repo 2>/dev/null || true
rm -rf "$base"
"#;

/// Extracts the tar on the drive with `serial` into /root/repo.
pub fn extract_full_copy(serial: &str, readonly: bool) -> String {
    let chmod = if readonly {
        // tar creates parent directories it was not given with default modes.
        "chmod -R a-w /root/repo"
    } else {
        ":"
    };
    format!(
        r#"set -eu
{CHECK_FREE}
{FIND_DRIVE}
dev=$(find_drive {serial})
trap 'rm -rf /root/repo.partial' EXIT
mkdir -p /root/repo.partial
tar --extract --same-permissions --same-owner --file "$dev" --directory /root/repo.partial
mv /root/repo.partial /root/repo
{chmod}
sync
"#
    )
}

/// Writes the patch on stdout. `$1` is the base commit or empty (plain
/// export: against HEAD). Uses a copy of the index, so the guest's index,
/// HEAD and files stay as they are. Exit 3: unknown base commit.
///
/// In an overlay workspace made by this version, `changed.pl` lists the
/// paths that can differ from the index (what the overlay's upper layer
/// holds, what the host saw changed, what the guest's index changed) and
/// only those are updated (`git update-index`), in time that grows with
/// the change, not the repo. Anywhere else (full_copy, an older image, a
/// failure of that path) every file is looked at (`git add --all`).
/// `BANGER_EXPORT_SCAN=full` forces the latter; `BANGER_REPO` and
/// `BANGER_WS` name the repo and the workspace base (tests).
pub const EXPORT: &str = concat!(
    r#"set -eu
cd "${BANGER_REPO:-/root/repo}"
ws="${BANGER_WS:-/var/lib/banger/workspace}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tmp="$work/index"
# The copy keeps the index's mtime (`cp -p`): git re-reads files changed in
# or after the second the index was written ("racily clean"); a copy dated
# now would hide a same-size edit made in that second from the full scan.
scratch_index() {
    if [ -f .git/index ]; then cp -p .git/index "$tmp"; else rm -f "$tmp"; fi
}
scratch_index
export GIT_INDEX_FILE="$tmp"
git="git -c core.quotepath=true"
base="${1:-}"
if [ -n "$base" ]; then
    if ! $git cat-file -e "$base^{commit}" 2>/dev/null; then
        echo "banger: commit $base is not in the guest's repository" >&2
        exit 3
    fi
elif $git rev-parse --verify -q HEAD >/dev/null; then
    base=HEAD
else
    base=$($git hash-object -t tree /dev/null)
fi
cat > "$work/changed.pl" <<'BANGER_PERL'
"#,
    include_str!("changed.pl"),
    r#"BANGER_PERL
# Sets $why when it cannot.
fast_add() {
    why="asked to"
    [ "${BANGER_EXPORT_SCAN:-}" != full ] || return 1
    why="not an overlay workspace of this version"
    [ -f "$ws/lower/banger/changed" ] || return 1
    why=$(perl "$work/changed.pl" "$ws" "$work/paths" 2>&1 >/dev/null) || return 1
    n=$why
    if [ -s "$work/paths.dirs" ]; then
        why=$($git update-index --force-remove -z --stdin < "$work/paths.dirs" 2>&1 >/dev/null) || return 1
    fi
    why=$($git update-index --add --remove --replace -z --stdin < "$work/paths" 2>&1 >/dev/null) || return 1
    echo "banger: export looked at $n paths" >&2
}
if ! fast_add; then
    # Every file: the index came from another machine, so compare files by
    # size and mtime only, or git would re-read every file to trust it.
    scratch_index
    $git -c core.checkStat=minimal -c core.trustctime=false add --all .
    echo "banger: export looked at every file ($(echo "$why" | tail -n 1))" >&2
fi
# The whole patch first, then out: a git that fails sends nothing.
$git diff --cached --binary --full-index -M "$base" > "$work/patch"
cat "$work/patch"
"#
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_valid_sh() {
        for script in [
            mount_overlay("banger-ws"),
            first_mount_overlay("banger-ws"),
            extract_full_copy("banger-ws", true),
            EXPORT.to_string(),
            CHECK_FREE.to_string(),
            UNDO_OVERLAY.to_string(),
        ] {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &script])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

//! Debian version strings: dpkg's ordering, and the source version a binary
//! package was built from (a binNMU adds `+bN` to the binary's version only).

use std::cmp::Ordering;

/// The source version of a binary version: `1:7.2+dfsg-7+deb12u18+b3` was
/// built from `1:7.2+dfsg-7+deb12u18` (a binary-only rebuild, which
/// `Architecture: all` packages such as `qemu-system-data` never get).
pub fn source_of(version: &str) -> &str {
    if let Some((head, tail)) = version.rsplit_once("+b") {
        if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) {
            return head;
        }
    }
    version
}

/// Compares two Debian versions as dpkg does (epoch, upstream, revision;
/// `~` sorts before everything, even the end of the string).
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua, ub))
        .then_with(|| compare_part(ra, rb))
}

fn split(v: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) => (e.parse().unwrap_or(0), rest),
        None => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream, revision),
        None => (epoch, rest, ""),
    }
}

/// dpkg's `verrevcmp`: alternating runs of non-digits (compared by a
/// modified ASCII order) and digits (compared as numbers).
fn compare_part(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        let (na, ra) = take_while(a, |c| !c.is_ascii_digit());
        let (nb, rb) = take_while(b, |c| !c.is_ascii_digit());
        let ord = compare_letters(na, nb);
        if ord != Ordering::Equal {
            return ord;
        }
        let (da, ra) = take_while(ra, |c| c.is_ascii_digit());
        let (db, rb) = take_while(rb, |c| c.is_ascii_digit());
        let ord = compare_digits(da, db);
        if ord != Ordering::Equal {
            return ord;
        }
        a = ra;
        b = rb;
    }
    Ordering::Equal
}

fn take_while(s: &[u8], keep: impl Fn(u8) -> bool) -> (&[u8], &[u8]) {
    let n = s.iter().position(|&c| !keep(c)).unwrap_or(s.len());
    s.split_at(n)
}

/// `~` < end of string < letters < everything else.
fn weight(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn compare_letters(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().max(b.len());
    for i in 0..n {
        let ord = weight(a.get(i).copied()).cmp(&weight(b.get(i).copied()));
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

fn compare_digits(a: &[u8], b: &[u8]) -> Ordering {
    let trim = |s: &[u8]| -> Vec<u8> { s.iter().copied().skip_while(|&c| c == b'0').collect() };
    let (a, b) = (trim(a), trim(b));
    a.len().cmp(&b.len()).then_with(|| a.cmp(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn binnmu_suffix_is_not_part_of_the_source() {
        assert_eq!(
            source_of("1:7.2+dfsg-7+deb12u18+b3"),
            "1:7.2+dfsg-7+deb12u18"
        );
        assert_eq!(source_of("1:7.2+dfsg-7+deb12u18"), "1:7.2+dfsg-7+deb12u18");
        assert_eq!(source_of("1.47.0-2+b2"), "1.47.0-2");
        assert_eq!(source_of("1.0+build"), "1.0+build");
    }

    #[test]
    fn orders_as_dpkg_does() {
        let cases = [
            (
                "1:10.0.2+ds-2+deb13u1~bpo12+1",
                "1:7.2+dfsg-7+deb12u18+b3",
                Greater,
            ),
            ("1:7.2+dfsg-7+deb12u18+b3", "1:7.2+dfsg-7+deb12u18", Greater),
            ("1:7.2+dfsg-7+deb12u19", "1:7.2+dfsg-7+deb12u18+b3", Greater),
            ("1:7.2+dfsg-7+deb12u15", "1:7.2+dfsg-7+deb12u18+b3", Less),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0", Equal),
            ("2:1.0", "1:9.9", Greater),
            ("1.0-1", "1.0-1~bpo1", Greater),
            ("1.10", "1.9", Greater),
            ("1.0a", "1.0+", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }
}

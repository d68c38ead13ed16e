//! Oracles shared by the fuzz targets: the documented rules, written
//! independently of the code they check.

/// The longest valid prefix of `data` as text (libFuzzer mutates bytes;
/// every parser under test takes `&str`).
pub fn text(data: &[u8]) -> &str {
    match std::str::from_utf8(data) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&data[..e.valid_up_to()]).unwrap_or_default(),
    }
}

/// The documented VM name rule (README, `names.rs`): a DNS label of 1-32
/// characters of `[a-z0-9-]`, not starting or ending with `-`.
pub fn doc_valid_name(s: &str) -> bool {
    let n = s.chars().count();
    (1..=32).contains(&n)
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A valid VM name made from arbitrary text (keeps `[a-z0-9-]`, trims
/// `-`, at most 32 characters), or `None` when nothing is left.
pub fn name_from(s: &str) -> Option<String> {
    let kept: String = s
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .take(32)
        .collect();
    let name = kept.trim_matches('-').to_string();
    (!name.is_empty()).then_some(name)
}

//! Output helpers: tables and JSON on stdout, one-line errors on stderr.

use banger_api::VmInfo;

/// An error chain on one line.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}

pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints rows as aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

pub fn vm_table(vms: &[VmInfo]) {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.state.to_string(),
                v.ip.clone(),
                v.vmm.clone(),
                v.cpus.to_string(),
                format!("{}M", v.memory_mib),
                format!("{}G", v.disk_gib),
                v.image.clone(),
                if v.nat { "yes" } else { "no" }.to_string(),
                age(v.created_at),
                v.expires_at
                    .map_or_else(|| "-".to_string(), crate::commands::vmcreate::left),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "STATE", "IP", "VMM", "CPUS", "MEMORY", "DISK", "IMAGE", "NAT", "CREATED",
            "TTL",
        ],
        &rows,
    );
}

pub fn vm_details(v: &VmInfo) {
    let mut rows = vec![
        ("name", v.name.clone()),
        ("state", v.state.to_string()),
        ("ip", v.ip.clone()),
        ("mac", v.mac.clone()),
        ("tap", v.tap.clone()),
        ("vmm", v.vmm.clone()),
        ("cpus", v.cpus.to_string()),
        ("memory", format!("{} MiB", v.memory_mib)),
        ("disk", format!("{} GiB ({})", v.disk_gib, v.disk_strategy)),
        (
            "image",
            format!("{} (version {})", v.image, v.image_version),
        ),
        ("nat", v.nat.to_string()),
        ("created", age(v.created_at)),
        (
            "booted",
            match &v.template {
                Some(t) => format!("restored from template {t}"),
                None => "cold".to_string(),
            },
        ),
    ];
    if let Some(pid) = v.pid {
        rows.push(("pid", pid.to_string()));
    }
    if let Some(at) = v.expires_at {
        rows.push((
            "ttl",
            format!("{} left", crate::commands::vmcreate::left(at)),
        ));
    }
    if let Some(e) = &v.last_error {
        rows.push(("error", e.clone()));
    }
    if let Some(w) = &v.workspace {
        rows.push((
            "workspace",
            format!("{} at {} ({})", w.source, w.head, w.mode),
        ));
    }
    for (k, val) in rows {
        println!("{k:<10} {val}");
    }
}

/// "3m ago" style age of a Unix timestamp.
pub fn age(ts: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(ts);
    let d = (now - ts).max(0);
    match d {
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        3600..=86399 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

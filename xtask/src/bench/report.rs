//! The bench's rows: samples of one measurement, their median and spread,
//! and a ratio against another row of the same run; printed as one table
//! and written as JSON.

use std::path::Path;

use serde_json::json;

/// One measurement, sampled one or more times in this run.
#[derive(Debug, Clone)]
pub struct Row {
    pub group: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub samples: Vec<f64>,
    /// What the ratio compares (`cold / hand-written`, ...) and its value.
    pub ratio: Option<(String, f64)>,
    /// Median, spread (slowest - fastest) and runs, for a row measured
    /// elsewhere that keeps only those.
    pub summary: Option<(f64, f64, usize)>,
}

impl Row {
    pub fn new(group: &'static str, name: &str, unit: &'static str, samples: Vec<f64>) -> Self {
        Row {
            group,
            name: name.to_string(),
            unit,
            samples,
            ratio: None,
            summary: None,
        }
    }

    /// A row given as its median, spread and number of runs.
    pub fn summarised(
        group: &'static str,
        name: &str,
        median: f64,
        spread: f64,
        runs: usize,
    ) -> Self {
        Row {
            summary: Some((median, spread, runs)),
            ..Row::new(group, name, "s", Vec::new())
        }
    }

    pub fn with_ratio(mut self, what: &str, value: f64) -> Self {
        self.ratio = Some((what.to_string(), value));
        self
    }

    pub fn median(&self) -> f64 {
        match self.summary {
            Some((m, _, _)) => m,
            None => median(&self.samples),
        }
    }

    fn spread(&self) -> (f64, f64) {
        let min = self.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self
            .samples
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        (min, max)
    }
}

pub fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The table, one line per row.
pub fn print(rows: &[Row], machine: &str) {
    println!();
    println!("banger bench ({machine})");
    println!(
        "  {:<58} {:>10} {:>19}  ratio",
        "measurement", "median", "spread (n)"
    );
    let mut group = "";
    for r in rows {
        if r.group != group {
            group = r.group;
            println!("  [{group}]");
        }
        let spread = match r.summary {
            Some((_, s, n)) => format!("spread {s:.2} ({n})"),
            None => {
                let (min, max) = r.spread();
                format!("{min:.2}-{max:.2} ({})", r.samples.len())
            }
        };
        let ratio = r
            .ratio
            .as_ref()
            .map(|(what, v)| format!("{v:.2}x {what}"))
            .unwrap_or_default();
        println!(
            "  {:<58} {:>8.2}{:<2} {:>19}  {ratio}",
            r.name,
            r.median(),
            r.unit,
            spread
        );
    }
}

/// Writes the rows as JSON (`target/bench.json`).
pub fn write_json(rows: &[Row], machine: &str, path: &Path) -> anyhow::Result<()> {
    let rows: Vec<_> = rows
        .iter()
        .map(|r| {
            let (min, max) = r.spread();
            json!({
                "group": r.group,
                "name": r.name,
                "unit": r.unit,
                "median": r.median(),
                "min": min,
                "max": max,
                "samples": r.samples,
                "summary": r.summary.map(|(m, s, n)| json!({"median": m, "spread": s, "runs": n})),
                "ratio": r.ratio.as_ref().map(|(what, v)| json!({"of": what, "value": v})),
            })
        })
        .collect();
    let doc = json!({ "machine": machine, "rows": rows });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}

/// The machine, in a line: CPU model, cores, memory.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!("{model}, {cores} cores, {} GiB, TCG guests", mem >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}

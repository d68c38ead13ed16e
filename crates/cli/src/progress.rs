//! The progress line on stderr: a spinner with the current phase when stderr
//! is a terminal, nothing when piped.

use std::io::IsTerminal;
use std::time::Duration;

use banger_api::Progress;
use indicatif::{ProgressBar, ProgressStyle};

pub struct ProgressLine {
    bar: Option<ProgressBar>,
}

impl ProgressLine {
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(100);
            let style = ProgressStyle::with_template("{spinner} [{elapsed:>3}] {pos:>3}% {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self { bar }
    }

    pub fn update(&mut self, p: &Progress) {
        if let Some(bar) = &self.bar {
            bar.set_position(u64::from(p.percent));
            bar.set_message(p.message.clone());
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

//! A one-line progress bar on stderr, drawn only when stderr is a terminal (never in logs or
//! pipes), at most ten times a second.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const WIDTH: usize = 30;
const REDRAW: Duration = Duration::from_millis(100);

/// Progress of a count towards a known total.
pub struct Bar {
    enabled: bool,
    total: u64,
    start: Instant,
    last_draw: Option<Instant>,
}

impl Bar {
    /// Whether a bar would be drawn (stderr is a terminal): compute its total only then.
    pub fn wanted() -> bool {
        std::io::stderr().is_terminal()
    }

    /// A bar towards `total`; drawn only when stderr is a terminal.
    pub fn new(total: u64) -> Self {
        Bar {
            enabled: Self::wanted(),
            total,
            start: Instant::now(),
            last_draw: None,
        }
    }

    /// Shows `done` (redrawn at most every 100 ms).
    pub fn update(&mut self, done: u64) {
        if !self.enabled || self.last_draw.is_some_and(|t| t.elapsed() < REDRAW) {
            return;
        }
        self.last_draw = Some(Instant::now());
        eprint!("\r{}", line(done, self.total, self.start.elapsed()));
        let _ = std::io::stderr().flush();
    }

    /// Clears the bar so that the summary line starts on a clean line.
    pub fn finish(&mut self) {
        if self.enabled && self.last_draw.is_some() {
            eprint!("\r{:width$}\r", "", width = WIDTH + 60);
            let _ = std::io::stderr().flush();
        }
    }
}

fn line(done: u64, total: u64, elapsed: Duration) -> String {
    let frac = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let filled = (frac * WIDTH as f64).round() as usize;
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    format!(
        "[{}{}] {done}/{total} messages ({:>3.0}%), {rate:.0}/s",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        frac * 100.0
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_a_bar() {
        let l = super::line(5, 10, std::time::Duration::from_secs(1));
        assert!(
            l.starts_with("[###############---------------] 5/10"),
            "{l}"
        );
        assert!(super::line(0, 0, std::time::Duration::ZERO).contains("100%"));
    }
}

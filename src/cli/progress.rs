//! Build progress on stderr: on a terminal, one line redrawn in place with
//! a bar, the bytes and the rate while downloading; otherwise (CI logs,
//! pipes) one line per phase and no redraws.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use zeroboot::image::progress::{Phase, Progress};

/// Draws reports as they come.
pub struct Renderer {
    tty: bool,
    last: Option<(Phase, String)>,
    phase_started: Instant,
    drawn: Instant,
}

impl Default for Renderer {
    fn default() -> Self {
        Renderer {
            tty: std::io::stderr().is_terminal(),
            last: None,
            phase_started: Instant::now(),
            drawn: Instant::now(),
        }
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// `[#####     ] 12.3/45.6 MB 3.2 MB/s`
fn bar(done: u64, total: u64, secs: f64) -> String {
    const WIDTH: usize = 24;
    let filled = (done as f64 / total.max(1) as f64 * WIDTH as f64).round() as usize;
    let filled = filled.min(WIDTH);
    format!(
        "[{}{}] {:.1}/{:.1} MB {:.1} MB/s",
        "#".repeat(filled),
        " ".repeat(WIDTH - filled),
        mb(done),
        mb(total),
        mb(done) / secs.max(0.001)
    )
}

impl Renderer {
    /// Shows one report.
    pub fn show(&mut self, p: &Progress) {
        let key = (p.phase, p.message.clone());
        let new_phase = self.last.as_ref() != Some(&key);
        if new_phase {
            if self.tty && self.last.is_some() {
                eprintln!();
            }
            self.phase_started = Instant::now();
            self.last = Some(key);
        }
        let phase = serde_json::to_value(p.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let counted = match p.total {
            Some(total) => format!(
                " {}",
                bar(p.done, total, self.phase_started.elapsed().as_secs_f64())
            ),
            None => String::new(),
        };
        if self.tty {
            // At most 10 redraws a second.
            if !new_phase && self.drawn.elapsed().as_millis() < 100 && p.total != Some(p.done) {
                return;
            }
            self.drawn = Instant::now();
            eprint!("\r\x1b[2K{phase}: {}{counted}", p.message);
            let _ = std::io::stderr().flush();
        } else if new_phase {
            eprintln!("zeroboot: {phase}: {}{counted}", p.message);
        }
    }

    /// Ends the redrawn line.
    pub fn finish(&mut self) {
        if self.tty && self.last.is_some() {
            eprintln!();
        }
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_bytes_and_rate() {
        assert_eq!(
            bar(5_000_000, 10_000_000, 2.0),
            "[############            ] 5.0/10.0 MB 2.5 MB/s"
        );
        assert!(bar(0, 0, 0.0).starts_with("[    "));
        assert!(bar(20, 10, 1.0).starts_with("[########################]"));
    }
}

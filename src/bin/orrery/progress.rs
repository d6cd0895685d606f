//! Progress of long work on the command line: a bar on a terminal (indicatif), a plain log
//! line every few seconds otherwise (a service log or CI has no use for redraws).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use orrery::rebuild::Replay;

/// How often the plain display logs.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// A bar of `template`, where `{rate}` is events per second without decimals.
pub fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("a valid template")
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        )
        .progress_chars("=> ")
}

/// Renders `orrery rebuild`'s progress.
pub struct ReplayDisplay {
    terminal: bool,
    current: Option<(&'static str, Instant, Option<ProgressBar>)>,
    last_log: Instant,
}

impl ReplayDisplay {
    /// A display for this process's stderr.
    pub fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            current: None,
            last_log: Instant::now(),
        }
    }

    /// Shows where a replay stands.
    pub fn update(&mut self, r: Replay) {
        if self.current.as_ref().is_none_or(|(s, _, _)| *s != r.stream) {
            self.finish();
            let bar = self.terminal.then(|| {
                let bar = ProgressBar::new(r.target);
                bar.set_style(bar_style(
                    "{prefix:>10} [{bar:36}] {percent:>3}% {human_pos}/{human_len} {rate} ETA {eta}",
                ));
                bar.set_prefix(r.stream);
                bar
            });
            self.current = Some((r.stream, Instant::now(), bar));
        }
        let Some((_, started, bar)) = &self.current else {
            return;
        };
        match bar {
            Some(bar) => bar.set_position(r.checkpoint.min(r.target)),
            None if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = Instant::now();
                let rate = r.replayed as f64 / started.elapsed().as_secs_f64().max(1e-3);
                let left = r.target.saturating_sub(r.checkpoint);
                let share = 100.0 * r.checkpoint as f64 / r.target.max(1) as f64;
                tracing::info!(
                    stream = r.stream,
                    checkpoint = r.checkpoint,
                    target = r.target,
                    share = format!("{share:.1}%"),
                    events_per_sec = rate.round() as u64,
                    eta_secs = (left as f64 / rate.max(1.0)).round() as u64,
                    "replaying"
                );
            }
            None => {}
        }
    }

    /// Closes the current bar, if any.
    pub fn finish(&mut self) {
        if let Some((_, _, Some(bar))) = self.current.take() {
            bar.finish();
        }
    }
}

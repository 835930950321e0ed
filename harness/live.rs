//! Live progress on a terminal: one line per target of every running drill, with its current
//! phase and, from the fault on, the time elapsed against the target's RTO objective.
//!
//! Only a terminal gets a [`Board`]; off a terminal (CI logs) nothing is drawn and the log lines
//! say the same things. The figures drawn here are the wall clock as it ticks; the RTO the report
//! holds is measured by the drill (docs/measurement.md §2), and the line shows that one once it is known.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::spec::Scenario;

/// How often the lines redraw, and so how often the elapsed time moves.
const TICK: Duration = Duration::from_millis(100);
/// Width of the gauge that fills as the elapsed time approaches the objective.
const GAUGE: usize = 20;

/// The lines drawn on stderr. Clones draw on the same terminal.
#[derive(Clone)]
pub struct Board {
    multi: MultiProgress,
}

impl Board {
    /// A board when stderr is a terminal, `None` otherwise.
    pub fn on_terminal() -> Option<Board> {
        std::io::stderr().is_terminal().then(|| Board {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)),
        })
    }

    /// Lines for the targets of one drill; they disappear when the last clone is dropped.
    pub fn lines(&self, scenario: &Scenario) -> Lines {
        let started = Instant::now();
        let width = scenario
            .targets
            .iter()
            .map(|t| scenario.name.len() + 1 + t.name.len())
            .max()
            .unwrap_or(0);
        let targets = scenario
            .targets
            .iter()
            .map(|t| {
                let state = Arc::new(Mutex::new(LineState {
                    phase: "starting".into(),
                    started,
                    rto_from: None,
                    objective: t.objectives.rto,
                    recovered: None,
                }));
                let shown = state.clone();
                let style = ProgressStyle::with_template("{spinner} {prefix} {line}")
                    .expect("a valid template")
                    .with_key(
                        "line",
                        move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                            let line = shown.lock().expect("not poisoned");
                            let _ = w.write_str(&line.render(Instant::now()));
                        },
                    );
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(style);
                bar.set_prefix(format!(
                    "{:width$}",
                    format!("{}/{}", scenario.name, t.name)
                ));
                bar.enable_steady_tick(TICK);
                (t.name.clone(), Line { bar, state })
            })
            .collect();
        Lines(Some(Arc::new(DrillLines {
            multi: self.multi.clone(),
            targets,
        })))
    }

    /// Runs `f` (which prints) with the lines cleared, then draws them again below its output.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.multi.suspend(f)
    }
}

/// Log lines go above the live lines instead of through them.
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Board {
    type Writer = Above<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Above(self)
    }
}

/// A writer that prints to stderr above the live lines (the formatter writes each event at once).
pub struct Above<'a>(&'a Board);

impl Write for Above<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// One drill's lines, or nothing when there is no terminal (the default).
#[derive(Clone, Default)]
pub struct Lines(Option<Arc<DrillLines>>);

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Lines(drawn)"
        } else {
            "Lines(none)"
        })
    }
}

struct DrillLines {
    multi: MultiProgress,
    targets: BTreeMap<String, Line>,
}

struct Line {
    bar: ProgressBar,
    state: Arc<Mutex<LineState>>,
}

impl Drop for DrillLines {
    fn drop(&mut self) {
        for line in self.targets.values() {
            line.bar.finish_and_clear();
            self.multi.remove(&line.bar);
        }
    }
}

impl Lines {
    /// `target` (every target when `None`) entered `phase`.
    pub fn phase(&self, target: Option<&str>, phase: &str) {
        self.each(target, |s| s.phase = phase.into());
    }

    /// The RTO clock of `target` runs from `at` (the fault, or the restore's start).
    pub fn rto_from(&self, target: &str, at: Instant) {
        self.each(Some(target), |s| s.rto_from = Some(at));
    }

    /// `target` is verified and recovered after `rto` (measured), or not recovered (`None`).
    pub fn recovered(&self, target: &str, rto: Option<Duration>) {
        self.each(Some(target), |s| {
            s.recovered = Some(rto);
            s.phase = if rto.is_some() {
                "recovered"
            } else {
                "not recovered"
            }
            .into();
        });
    }

    fn each(&self, target: Option<&str>, f: impl Fn(&mut LineState)) {
        let Some(drill) = &self.0 else { return };
        for (name, line) in &drill.targets {
            if target.is_none_or(|t| t == name) {
                f(&mut line.state.lock().expect("not poisoned"));
                line.bar.tick();
            }
        }
    }
}

/// What one target's line shows.
#[derive(Debug, Clone)]
struct LineState {
    phase: String,
    started: Instant,
    rto_from: Option<Instant>,
    objective: Duration,
    /// Set once verified: the measured RTO, or `None` when not recovered.
    recovered: Option<Option<Duration>>,
}

impl LineState {
    fn render(&self, now: Instant) -> String {
        // A long step name ("fault corrupt-data-file") keeps a space before the clock.
        let mut out = format!("{:<13} ", self.phase);
        let objective = short(self.objective);
        match (self.rto_from, self.recovered) {
            (_, Some(Some(rto))) => {
                let verdict = if rto <= self.objective {
                    "met"
                } else {
                    "missed"
                };
                let _ = write!(out, "RTO {} / {objective}  {verdict}", short(rto));
            }
            (_, Some(None)) => {
                let _ = write!(out, "RTO unknown / {objective}");
            }
            (Some(from), None) => {
                let elapsed = now.saturating_duration_since(from);
                let _ = write!(
                    out,
                    "RTO {} / {objective} {}",
                    short(elapsed),
                    gauge(elapsed, self.objective)
                );
                if elapsed > self.objective {
                    let _ = write!(out, " over by {}", short(elapsed - self.objective));
                }
            }
            (None, None) => {
                let elapsed = now.saturating_duration_since(self.started);
                let _ = write!(out, "{} into the drill", short(elapsed));
            }
        }
        out
    }
}

/// `[#######-------------]`: how much of the objective has gone.
fn gauge(elapsed: Duration, objective: Duration) -> String {
    let filled = if objective.is_zero() {
        GAUGE
    } else {
        ((elapsed.as_secs_f64() / objective.as_secs_f64()) * GAUGE as f64).min(GAUGE as f64)
            as usize
    };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(GAUGE - filled))
}

/// A duration at a tenth of a second, in the largest fitting unit: `4.2s`, `12m03.5s`, `1h00m`.
fn short(d: Duration) -> String {
    let tenths = d.as_millis() / 100;
    let (h, m, s) = (tenths / 36_000, tenths / 600 % 60, tenths % 600);
    match (h, m) {
        (0, 0) => format!("{}.{}s", s / 10, s % 10),
        (0, _) => format!("{m}m{:02}.{}s", s / 10, s % 10),
        _ => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(phase: &str) -> (LineState, Instant) {
        let started = Instant::now();
        let state = LineState {
            phase: phase.into(),
            started,
            rto_from: None,
            objective: Duration::from_secs(60),
            recovered: None,
        };
        (state, started)
    }

    #[test]
    fn before_the_fault_the_line_counts_from_the_drills_start() {
        let (s, t0) = line("workload");
        assert_eq!(
            s.render(t0 + Duration::from_millis(8_250)),
            "workload      8.2s into the drill"
        );
    }

    #[test]
    fn a_long_step_name_keeps_a_space_before_the_clock() {
        let (s, t0) = line("describe-backup");
        assert_eq!(
            s.render(t0 + Duration::from_millis(8_250)),
            "describe-backup 8.2s into the drill"
        );
    }

    #[test]
    fn after_the_fault_the_gauge_fills_toward_the_objective_and_says_when_it_is_over() {
        let (mut s, t0) = line("restore");
        s.rto_from = Some(t0);
        assert_eq!(
            s.render(t0 + Duration::from_secs(15)),
            "restore       RTO 15.0s / 1m00.0s [#####---------------]"
        );
        assert_eq!(
            s.render(t0 + Duration::from_secs(75)),
            "restore       RTO 1m15.0s / 1m00.0s [####################] over by 15.0s"
        );
    }

    #[test]
    fn once_verified_the_line_shows_the_measured_rto_and_its_verdict() {
        let (mut s, t0) = line("verify");
        s.rto_from = Some(t0);
        s.recovered = Some(Some(Duration::from_millis(1_300)));
        s.phase = "recovered".into();
        // The ticking clock no longer matters: the measured figure stays.
        assert_eq!(
            s.render(t0 + Duration::from_secs(500)),
            "recovered     RTO 1.3s / 1m00.0s  met"
        );
        s.recovered = Some(None);
        s.phase = "not recovered".into();
        assert_eq!(s.render(t0), "not recovered RTO unknown / 1m00.0s");
    }

    #[test]
    fn durations_are_short_and_exact_to_a_tenth() {
        assert_eq!(short(Duration::from_millis(99)), "0.0s");
        assert_eq!(short(Duration::from_millis(61_560)), "1m01.5s");
        assert_eq!(short(Duration::from_secs(3_600)), "1h00m");
        assert_eq!(
            gauge(Duration::ZERO, Duration::ZERO),
            format!("[{}]", "#".repeat(20))
        );
    }
}

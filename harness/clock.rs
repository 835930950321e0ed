//! The run's clock and its unit: every figure in a report is an offset on one monotonic clock,
//! in [`Micros`]. A leaf: imports nothing from the crate.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Microseconds since the run's start, on the run's monotonic clock.
pub type Micros = u64;

/// The run's clock: every figure in a report is an offset on it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    wall: SystemTime,
}

impl Clock {
    pub fn start() -> Self {
        Clock {
            start: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// Wall-clock time of the run's start (for reports only; never for durations).
    pub fn started_at(&self) -> SystemTime {
        self.wall
    }

    pub fn micros(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    pub fn millis(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The wall-clock time of a run offset, for tools that take wall-clock targets.
    pub fn wall_at(&self, offset: Micros) -> SystemTime {
        self.wall + Duration::from_micros(offset)
    }

    /// The run offset of a wall-clock time (0 for times before the run).
    pub fn offset_of_wall(&self, t: SystemTime) -> Micros {
        t.duration_since(self.wall)
            .map_or(0, |d| d.as_micros() as Micros)
    }

    /// The run offset of `instant`.
    pub fn offset_of(&self, instant: Instant) -> Micros {
        instant.saturating_duration_since(self.start).as_micros() as Micros
    }

    pub fn instant_at(&self, offset: Micros) -> Instant {
        self.start + Duration::from_micros(offset)
    }
}

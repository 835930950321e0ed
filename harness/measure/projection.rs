//! RTO projection: restore time fitted against dataset size by least squares
//! (`rto = fixed + per_row × rows`, the container start and a restore that grows with the data),
//! projected to the production size and compared with the objective. The fit's error on the
//! measured points is reported with it, so a poor fit is not read as a forecast.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Projection {
    pub scenario: String,
    pub target: String,
    /// `(rows, achieved RTO ms)` of the runs fitted, by size.
    pub points: Vec<(u64, i64)>,
    pub fixed_ms: f64,
    pub ms_per_million_rows: f64,
    /// Root mean square of the residuals on the measured points.
    pub rms_error_ms: f64,
    /// The largest residual relative to its measured RTO.
    pub max_error_ratio: f64,
    pub production_rows: u64,
    pub projected_ms: i64,
    pub objective_ms: i64,
    /// The projected RTO at production size exceeds the objective.
    pub projected_miss: bool,
    /// Sizes with no achieved RTO, left out of the fit.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmeasured_sizes: Vec<u64>,
}

/// A least-squares line `rto = fixed + slope × size` through measured points, with its error on
/// them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    pub fixed_ms: f64,
    pub ms_per_unit: f64,
    /// Root mean square of the residuals on the measured points.
    pub rms_error_ms: f64,
    /// The largest residual relative to its measured RTO.
    pub max_error_ratio: f64,
}

/// Fits `points` (size, RTO ms); `None` with fewer than two distinct sizes.
pub fn fit(points: &[(u64, i64)]) -> Option<Line> {
    let n = points.len() as f64;
    let xs: Vec<f64> = points.iter().map(|p| p.0 as f64).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.1 as f64).collect();
    let mean_x = xs.iter().sum::<f64>() / n;
    let mean_y = ys.iter().sum::<f64>() / n;
    let sxx: f64 = xs.iter().map(|x| (x - mean_x).powi(2)).sum();
    if points.len() < 2 || sxx == 0.0 {
        return None;
    }
    let sxy: f64 = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| (x - mean_x) * (y - mean_y))
        .sum();
    let slope = sxy / sxx;
    let fixed = mean_y - slope * mean_x;
    let residuals: Vec<f64> = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| y - (fixed + slope * x))
        .collect();
    Some(Line {
        fixed_ms: fixed,
        ms_per_unit: slope,
        rms_error_ms: (residuals.iter().map(|r| r * r).sum::<f64>() / n).sqrt(),
        max_error_ratio: residuals
            .iter()
            .zip(&ys)
            .map(|(r, y)| if *y > 0.0 { r.abs() / y } else { 0.0 })
            .fold(0.0, f64::max),
    })
}

/// Fits `points` (rows, RTO ms); `None` with fewer than two distinct sizes.
pub fn project(
    scenario: &str,
    target: &str,
    points: &[(u64, i64)],
    production_rows: u64,
    objective_ms: i64,
) -> Option<Projection> {
    let mut points = points.to_vec();
    points.sort_unstable();
    let line = fit(&points)?;
    let projected = (line.fixed_ms + line.ms_per_unit * production_rows as f64).round() as i64;
    Some(Projection {
        scenario: scenario.into(),
        target: target.into(),
        points,
        fixed_ms: line.fixed_ms,
        ms_per_million_rows: line.ms_per_unit * 1e6,
        rms_error_ms: line.rms_error_ms,
        max_error_ratio: line.max_error_ratio,
        production_rows,
        projected_ms: projected,
        objective_ms,
        projected_miss: projected > objective_ms,
        unmeasured_sizes: Vec::new(),
    })
}

/// A restore test's restore time against its backup's size, over the runs of its scenario
/// that recovered: how fast the RTO grows with the backup, and at what size it would reach the
/// objective.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestoreTrend {
    /// `(backup bytes, achieved RTO ms)` of the runs fitted, oldest first; this run last.
    pub points: Vec<(u64, i64)>,
    pub fixed_ms: f64,
    pub ms_per_gb: f64,
    pub rms_error_ms: f64,
    pub max_error_ratio: f64,
    /// The backup size (bytes) at which the fitted RTO reaches the objective; none when the
    /// RTO does not grow with the size.
    pub objective_reached_at_bytes: Option<u64>,
}

impl RestoreTrend {
    /// One line for people: the growth per GB, over how many runs, and the size that reaches
    /// the objective.
    pub fn describe(&self) -> String {
        let reached = match self.objective_reached_at_bytes {
            Some(b) => format!("the RTO objective is reached at {:.2} GB", b as f64 / 1e9),
            None => "the RTO does not grow with the backup".into(),
        };
        format!(
            "{:+.1} s per GB over {} runs (fit error {:.1} s); {reached}",
            self.ms_per_gb / 1000.0,
            self.points.len(),
            self.rms_error_ms / 1000.0
        )
    }
}

/// Backup sizes closer together than this share fit no trend: their restore times differ by
/// noise, not by size.
pub const TREND_SPREAD: f64 = 0.10;

/// The trend through `points`; `None` with fewer than three, or with sizes that span less than
/// [`TREND_SPREAD`] (two points always fit exactly, and say nothing of their error).
pub fn restore_trend(points: &[(u64, i64)], objective_ms: i64) -> Option<RestoreTrend> {
    let smallest = points.iter().map(|p| p.0).min()? as f64;
    let largest = points.iter().map(|p| p.0).max()? as f64;
    if points.len() < 3 || largest < smallest * (1.0 + TREND_SPREAD) {
        return None;
    }
    let line = fit(points)?;
    let reached = (line.ms_per_unit > 0.0)
        .then(|| ((objective_ms as f64 - line.fixed_ms) / line.ms_per_unit).max(0.0))
        .filter(|b| b.is_finite())
        .map(|b| b.round() as u64);
    Some(RestoreTrend {
        points: points.to_vec(),
        fixed_ms: line.fixed_ms,
        ms_per_gb: line.ms_per_unit * 1e9,
        rms_error_ms: line.rms_error_ms,
        max_error_ratio: line.max_error_ratio,
        objective_reached_at_bytes: reached,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_trend_says_where_the_objective_is_reached() {
        // 2 s fixed, 10 s per GB: a 60 s objective at 5.8 GB.
        let gb = 1_000_000_000;
        let t = restore_trend(&[(gb, 12_000), (2 * gb, 22_000), (3 * gb, 32_000)], 60_000).unwrap();
        assert!((t.ms_per_gb - 10_000.0).abs() < 1e-6);
        assert_eq!(t.objective_reached_at_bytes, Some(5_800_000_000));
        // A restore that does not grow with the backup never reaches it.
        let flat = restore_trend(&[(10, 5_000), (20, 4_000), (30, 4_500)], 60_000).unwrap();
        assert_eq!(flat.objective_reached_at_bytes, None);
        // Two points, or sizes within 10 %: no trend.
        assert!(restore_trend(&[(gb, 12_000), (2 * gb, 22_000)], 60_000).is_none());
        assert!(restore_trend(&[(100, 5_000), (105, 6_000), (109, 5_500)], 60_000).is_none());
    }

    #[test]
    fn an_exact_line_projects_exactly_with_no_error() {
        // 2 s to start, 10 s per million rows.
        let p = project(
            "s",
            "db",
            &[(10_000, 2_100), (100_000, 3_000), (1_000_000, 12_000)],
            10_000_000,
            60_000,
        )
        .unwrap();
        assert!((p.fixed_ms - 2_000.0).abs() < 1e-6);
        assert!((p.ms_per_million_rows - 10_000.0).abs() < 1e-6);
        assert_eq!(p.projected_ms, 102_000);
        assert!(p.projected_miss);
        assert!(p.rms_error_ms < 1e-6 && p.max_error_ratio < 1e-9);
    }

    #[test]
    fn the_error_on_the_measured_points_is_reported() {
        // The restore-scaling bench's figures: not a straight line.
        let p = project(
            "s",
            "db",
            &[(10_000, 2_830), (100_000, 4_670), (1_000_000, 15_970)],
            1_000_000,
            60_000,
        )
        .unwrap();
        assert!(!p.projected_miss);
        assert!(p.rms_error_ms > 100.0, "{p:?}");
        assert!(p.max_error_ratio > 0.05 && p.max_error_ratio < 0.5, "{p:?}");
    }

    #[test]
    fn one_size_is_not_a_fit() {
        assert!(project("s", "db", &[(10, 1), (10, 2)], 100, 1).is_none());
        assert!(project("s", "db", &[(10, 1)], 100, 1).is_none());
    }
}

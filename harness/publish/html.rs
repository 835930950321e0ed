//! The report a person reads: one self-contained HTML file (inline CSS and SVG, no scripts, no
//! fetches) with the latest run of each scenario against its objectives, a phase timeline per
//! drill, and trend charts of achieved RTO and RPO over runs, scaled to the values, with the
//! objective drawn as a line (or named, when it lies far above them).

use maud::{DOCTYPE, Markup, PreEscaped, html};
use plotters::coord::{Shift, types::RangedCoordf64};
use plotters::prelude::*;

use crate::history::{RunRecord, latest_per_scenario};
use crate::report::TargetOutcome;

const CSS: &str = "
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
th { background: #f2f2f2; }
.met { color: #1a7f37; font-weight: bold; }
.missed, .error, .interrupted { color: #c62828; font-weight: bold; }
section { border-top: 2px solid #ddd; margin-top: 2em; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
.legend span { display: inline-block; margin-right: 1.2em; }
.legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: middle; }
";

const PHASE_COLORS: [RGBColor; 6] = [
    RGBColor(0x8e, 0x24, 0xaa),
    RGBColor(0xc0, 0xca, 0x33),
    RGBColor(0x39, 0x49, 0xab),
    RGBColor(0x00, 0x89, 0x7b),
    RGBColor(0xfb, 0x8c, 0x00),
    RGBColor(0x6d, 0x4c, 0x41),
];
const ACHIEVED: RGBColor = RGBColor(0x1e, 0x88, 0xe5);
const OBJECTIVE: RGBColor = RGBColor(0xd3, 0x2f, 0x2f);

fn secs(ms: i64) -> String {
    crate::util::seconds(ms.max(0) as u64)
}

fn achieved(ms: Option<i64>) -> String {
    ms.map_or_else(|| "none".into(), secs)
}

/// `2026-11-22T10:00:00Z` → `11-22 10:00`.
fn short_time(rfc3339: &str) -> String {
    rfc3339
        .get(5..16)
        .map_or_else(|| rfc3339.to_string(), |s| s.replace('T', " "))
}

type Drawn = Result<(), Box<dyn std::error::Error>>;
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// An SVG of `size` on white, drawn by `draw`; a drawing error becomes a paragraph naming `what`.
fn svg(size: (u32, u32), what: &str, draw: impl FnOnce(&Area) -> Drawn) -> String {
    let mut out = String::new();
    let drawn = {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        (|| -> Drawn {
            root.fill(&WHITE)?;
            draw(&root)?;
            root.present()?;
            Ok(())
        })()
    };
    match drawn {
        Ok(()) => out,
        Err(e) => format!("<p>{what}: {e}</p>"),
    }
}

/// Draws the chart's legend boxed at `position`.
fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> Drawn {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Achieved values over runs (x = run index), with the objective as a horizontal line. Runs
/// that achieved nothing leave a gap and are counted in the caption.
fn trend_svg(title: &str, points: &[(String, Option<i64>)], objective_ms: i64) -> String {
    svg((520, 260), &format!("chart {title}"), |root| {
        let values: Vec<(f64, f64)> = points
            .iter()
            .enumerate()
            .filter_map(|(i, (_, v))| v.map(|v| (i as f64, v as f64 / 1000.0)))
            .collect();
        let objective = objective_ms as f64 / 1000.0;
        // The y axis is scaled to the achieved values, so a 2 s RTO under a 120 s objective is
        // not a line on the floor; an objective far above them is named, not drawn.
        let highest = values.iter().map(|p| p.1).fold(0.0, f64::max);
        let scale = if highest > 0.0 {
            highest
        } else {
            objective.max(1.0)
        };
        let objective_on_chart = objective <= scale * 4.0;
        // Headroom above the highest line for the legend.
        let top = if objective_on_chart {
            scale.max(objective)
        } else {
            scale
        } * 1.45;
        let last = points.len().saturating_sub(1).max(1) as f64;
        let missing = points.len() - values.len();
        let caption = if missing > 0 {
            format!("{title} ({missing} run(s) without a value)")
        } else {
            title.to_string()
        };
        let mut chart = ChartBuilder::on(root)
            .caption(caption, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(48)
            .build_cartesian_2d(-0.3..last + 0.3, 0.0..top)?;
        chart
            .configure_mesh()
            .x_labels(points.len().clamp(2, 6))
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    points
                        .get(i as usize)
                        .map(|(label, _)| label.clone())
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("seconds")
            .draw()?;
        let (line, label) = if objective_on_chart {
            (
                vec![(-0.3, objective), (last + 0.3, objective)],
                format!("objective {}", secs(objective_ms)),
            )
        } else {
            (
                Vec::new(),
                format!("objective {} (above the chart)", secs(objective_ms)),
            )
        };
        chart
            .draw_series(LineSeries::new(line, OBJECTIVE.stroke_width(2)))?
            .label(label)
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], OBJECTIVE.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                values.iter().copied(),
                ACHIEVED.stroke_width(2),
            ))?
            .label("achieved")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], ACHIEVED.stroke_width(2)));
        chart.draw_series(values.iter().map(|&p| Circle::new(p, 3, ACHIEVED.filled())))?;
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

/// The colour of the `i`th recovery phase, as CSS.
fn phase_css(i: usize) -> String {
    let RGBColor(r, g, b) = PHASE_COLORS[i % PHASE_COLORS.len()];
    format!("#{r:02x}{g:02x}{b:02x}")
}

/// The timeline's legend, in the page beside the chart (never over the bars).
fn timeline_legend(t: &TargetOutcome) -> Markup {
    html! {
        p.legend {
            @for (i, (phase, ms)) in t.phases.iter().enumerate() {
                span { i style={ "background:" (phase_css(i)) } {} (phase) " " (secs(*ms)) }
            }
        }
    }
}

/// The recovery phases of one target as a stacked bar from the fault to the recovery; the
/// legend is [`timeline_legend`].
fn timeline_svg(t: &TargetOutcome) -> String {
    let total: i64 = t.phases.iter().map(|(_, ms)| ms).sum();
    if total <= 0 {
        return "<p>no recovery phases recorded</p>".into();
    }
    svg((1000, 90), "timeline", |root| {
        let end = total as f64 / 1000.0;
        let mut chart = ChartBuilder::on(root)
            .margin(8)
            .x_label_area_size(26)
            .build_cartesian_2d(0.0..end, 0.0..1.0)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .x_desc("seconds since the fault")
            .draw()?;
        let mut start = 0.0;
        for (i, (_, ms)) in t.phases.iter().enumerate() {
            let color = PHASE_COLORS[i % PHASE_COLORS.len()];
            let stop = start + *ms as f64 / 1000.0;
            chart.draw_series([Rectangle::new([(start, 0.1), (stop, 0.9)], color.filled())])?;
            start = stop;
        }
        Ok(())
    })
}

fn target_section(runs: &[RunRecord], latest: &RunRecord, t: &TargetOutcome) -> Markup {
    let series: Vec<&RunRecord> = runs.iter().filter(|r| r.comparable_with(latest)).collect();
    let point = |r: &RunRecord, f: fn(&TargetOutcome) -> Option<i64>| {
        (
            short_time(&r.started_at),
            r.targets.iter().find(|x| x.target == t.target).and_then(f),
        )
    };
    let rto: Vec<_> = series
        .iter()
        .map(|r| point(r, |x| x.rto_achieved_ms))
        .collect();
    let rpo: Vec<_> = series
        .iter()
        .map(|r| point(r, |x| x.rpo_achieved_ms))
        .collect();
    html! {
        h3 {
            (t.target) " (" (t.kind)
            @if let Some(rows) = t.dataset_rows { ", " (rows) " rows" }
            ")"
        }
        p {
            "RTO " span class=(if t.rto_met { "met" } else { "missed" }) { (achieved(t.rto_achieved_ms)) }
            " of " (secs(t.rto_target_ms)) "; RPO "
            span class=(if t.rpo_met { "met" } else { "missed" }) { (achieved(t.rpo_achieved_ms)) }
            " of " (secs(t.rpo_target_ms)) "; acknowledged writes lost: " (t.lost_writes_text()) "."
        }
        @if t.kind == crate::spec::PLATFORM {
            p { "The platform: from the first fault of any target to the last recovery; its phases are its targets'." }
        } @else {
            h4 { "Phase timeline of the latest run" }
            (PreEscaped(timeline_svg(t)))
            (timeline_legend(t))
        }
        h4 { "Over " (series.len()) " run(s)" }
        div.charts {
            (PreEscaped(trend_svg("achieved RTO", &rto, t.rto_target_ms)))
            (PreEscaped(trend_svg("achieved RPO", &rpo, t.rpo_target_ms)))
        }
    }
}

/// The whole page for `runs` (oldest first).
pub fn html(runs: &[RunRecord], generated_at: &str) -> String {
    let latest = latest_per_scenario(runs);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "drillrig: recovery drills" }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { "drillrig: recovery drills" }
                p { "Generated " (generated_at) " from " (runs.len()) " run(s) of "
                    (latest.len()) " scenario(s)." }
                h2 { "Latest run per scenario" }
                table {
                    thead { tr {
                        th { "scenario" } th { "outcome" } th { "started" } th { "target" }
                        th { "RTO achieved / objective" } th { "RPO achieved / objective" }
                        th { "lost writes" } th { "checks not passed" }
                    } }
                    tbody {
                        @for r in &latest {
                            @for t in &r.targets {
                                tr {
                                    td { (r.scenario) }
                                    td class=(r.outcome) { (r.outcome) }
                                    td { (r.started_at) }
                                    td { (t.target) }
                                    td class=(if t.rto_met { "met" } else { "missed" }) {
                                        (achieved(t.rto_achieved_ms)) " / " (secs(t.rto_target_ms)) }
                                    td class=(if t.rpo_met { "met" } else { "missed" }) {
                                        (achieved(t.rpo_achieved_ms)) " / " (secs(t.rpo_target_ms)) }
                                    td { (t.lost_writes_text()) }
                                    td { (t.checks.iter().filter(|c| c.status != "passed")
                                        .map(|c| format!("{} ({})", c.name, c.status))
                                        .collect::<Vec<_>>().join(", ")) }
                                }
                            }
                        }
                    }
                }
                @for r in &latest {
                    section {
                        h2 { (r.scenario) ": " span class=(r.outcome) { (r.outcome) } }
                        p { "Run " (r.run_id) ", started " (r.started_at)
                            @if let Some(rev) = &r.git_revision { ", revision " code { (rev) } } "." }
                        @if let Some(e) = &r.error { p.error { (e) } }
                        @for t in &r.targets { (target_section(runs, r, t)) }
                    }
                }
            }
        }
    }
    .into_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::tests::sample_run;

    /// The y axis's tick labels of a trend chart, as numbers.
    fn y_ticks(svg: &str) -> Vec<f64> {
        svg.split("<text")
            .filter_map(|t| t.split('>').nth(1)?.split('<').next()?.trim().parse().ok())
            .collect()
    }

    #[test]
    fn a_trend_is_scaled_to_its_values_and_an_objective_far_above_is_named() {
        let points: Vec<(String, Option<i64>)> = [2_000, 2_400, 2_100]
            .iter()
            .enumerate()
            .map(|(i, &ms)| (format!("r{i}"), Some(ms)))
            .collect();
        let far = trend_svg("RTO", &points, 120_000);
        assert!(
            far.contains("objective 120.000s (above the chart)"),
            "{far}"
        );
        let top = y_ticks(&far).into_iter().fold(0.0, f64::max);
        assert!(
            top > 2.4 && top < 5.0,
            "y axis up to {top} s for values up to 2.4 s"
        );
        let near = trend_svg("RTO", &points, 3_000);
        assert!(near.contains("objective 3.000s\n"), "{near}");
        assert!(!near.contains("above the chart"));
    }

    #[test]
    fn the_page_is_self_contained_with_a_chart_per_objective_and_a_timeline() {
        let runs: Vec<RunRecord> = (0..4)
            .map(|i| {
                sample_run(
                    &format!("r{i}"),
                    "pg-kill",
                    &format!("2026-11-{:02}T10:00:00Z", i + 1),
                    3_000 + i * 500,
                )
            })
            .collect();
        let page = html(&runs, "2026-11-22T12:00:00Z");
        // One timeline and two trends for the one target.
        assert_eq!(page.matches("<svg").count(), 3, "{page}");
        // 3 to 4.5 s under a 60 s objective: scaled to the values, the objective named.
        assert!(page.contains("objective 60.000s (above the chart)"));
        // The timeline's legend is in the page, outside the chart.
        assert!(page.contains("class=\"legend\""));
        for fetch in ["src=", "<link", "url(", "<script", "@import"] {
            assert!(!page.contains(fetch), "{fetch} in the page");
        }
    }
}

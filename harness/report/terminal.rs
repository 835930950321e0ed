//! The summary printed at the end of `drillrig run`.

use tabled::settings::Style;
use tabled::{Table, builder::Builder};

use super::{Report, TargetReport};
use crate::checks::CheckStatus;
use crate::util::seconds;

/// A detail cut to fit a terminal row; report.json and report.md keep it whole.
fn shorten(detail: &str) -> String {
    if detail.chars().count() > 100 {
        detail.chars().take(97).collect::<String>() + "..."
    } else {
        detail.to_string()
    }
}

fn yes_no(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

pub fn terminal(r: &Report) -> String {
    let mut out = format!(
        "drillrig {} ({}): {}\n",
        r.scenario,
        r.run_id,
        r.outcome.as_str().to_uppercase()
    );
    if let Some(e) = &r.error {
        out.push_str(&format!("{}: {e}\n", r.outcome.as_str()));
    }

    out.push_str(&Table::from(objectives(r)).with(Style::sharp()).to_string());
    out.push('\n');

    let phases = phases(r);
    if phases.count_records() > 1 {
        out.push_str(&Table::from(phases).with(Style::sharp()).to_string());
        out.push('\n');
    }
    for t in &r.targets {
        if let Some(o) = &t.offsite {
            out.push_str(&format!("offsite {}: {}\n", t.name, o.summary()));
        }
        for line in t.failover_summary() {
            out.push_str(&format!("{}: {line}\n", t.name));
        }
    }

    let checks = checks(r);
    if checks.count_records() > 1 {
        out.push_str(&Table::from(checks).with(Style::sharp()).to_string());
        out.push('\n');
    }
    out
}

/// Each target's objectives against what it achieved, then the platform's.
fn objectives(r: &Report) -> Builder {
    let mut objectives = Builder::default();
    objectives.push_record(["target", "objective", "target", "achieved", "verdict"]);
    for t in &r.targets {
        target_objectives(&mut objectives, t);
    }
    if let Some(p) = &r.platform {
        let by = |what: &Option<String>, how: &str| {
            what.as_ref()
                .map_or(String::new(), |t| format!(" ({how} {t})"))
        };
        objectives.push_record([
            crate::spec::PLATFORM.into(),
            "RTO".into(),
            seconds(p.rto.target_ms),
            p.rto.achieved_ms.map_or("—".into(), seconds) + &by(&p.rto.last_target, "last:"),
            yes_no(p.rto.met).into(),
        ]);
        objectives.push_record([
            crate::spec::PLATFORM.into(),
            "RPO".into(),
            seconds(p.rpo.target_ms),
            p.rpo.achieved_ms.map_or("—".into(), seconds) + &by(&p.rpo.worst_target, "worst:"),
            yes_no(p.rpo.met).into(),
        ]);
    }
    objectives
}

/// A target's rows: RTO, RPO and write p99; then the fetched backup and its trend for a
/// restore test, or the lost writes for a drill.
fn target_objectives(objectives: &mut Builder, t: &TargetReport) {
    objectives.push_record([
        t.name.clone(),
        "RTO".into(),
        seconds(t.rto.target_ms),
        t.rto.achieved_ms.map_or("—".into(), seconds),
        yes_no(t.rto.met).into(),
    ]);
    objectives.push_record([
        t.name.clone(),
        "RPO".into(),
        seconds(t.rpo.target_ms),
        t.rpo.achieved_ms.map_or("—".into(), seconds),
        yes_no(t.rpo.met).into(),
    ]);
    if let Some(w) = &t.write_latency {
        let ms = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.1} ms"));
        objectives.push_record([
            t.name.clone(),
            "write p99".into(),
            w.objective
                .as_ref()
                .map_or("—".into(), |o| format!("{} ms", o.target_ms)),
            format!(
                "{} during the fault ({} before, {} after); {} of {} unacknowledged",
                ms(w.objective
                    .as_ref()
                    .map_or(w.during.p99_ms, |o| o.achieved_ms)),
                ms(w.before.p99_ms),
                ms(w.after.p99_ms),
                w.during.unacknowledged,
                w.during.writes + w.during.unacknowledged
            ),
            w.objective
                .as_ref()
                .map_or(String::new(), |o| yes_no(o.met).into()),
        ]);
    }
    if let Some(src) = &t.source {
        objectives.push_record([
            t.name.clone(),
            "backup".into(),
            String::new(),
            format!(
                "{} ({}), made {}; {} bytes fetched at {} MB/s",
                src.fetched.object,
                src.fetched.format.describe(),
                src.fetched.made_at,
                src.fetched.bytes,
                src.mb_per_s
            ),
            String::new(),
        ]);
        if let Some(trend) = &src.trend {
            objectives.push_record([
                t.name.clone(),
                "trend".into(),
                String::new(),
                trend.describe(),
                String::new(),
            ]);
        }
        return;
    }
    objectives.push_record([
        t.name.clone(),
        "lost writes".into(),
        t.rpo.max_lost_writes.map_or("—".into(), |m| m.to_string()),
        match (t.rpo.lost_writes, t.rpo.holes) {
            (Some(lost), Some(holes)) => {
                format!("{lost} of {} (holes {holes})", t.rpo.acked_writes)
            }
            _ => super::unknown(t.rpo.unknown.as_deref()),
        },
        String::new(),
    ]);
}

/// Every target's recovery phases and how long each took.
fn phases(r: &Report) -> Builder {
    let mut phases = Builder::default();
    phases.push_record(["target", "phase", "duration"]);
    for t in &r.targets {
        for (name, ms) in t.rto.phases.entries() {
            phases.push_record([t.name.clone(), name.to_string(), seconds(ms)]);
        }
    }
    phases
}

/// What failed or was checked: a failed restore, outages no fault caused, each target's
/// checks, and the platform's cross-store check.
fn checks(r: &Report) -> Builder {
    let mut checks = Builder::default();
    checks.push_record(["target", "check", "status", "detail"]);
    for t in &r.targets {
        if let Some(e) = &t.restore.error {
            checks.push_record([
                t.name.clone(),
                "restore".into(),
                "FAILED".into(),
                shorten(e),
            ]);
        }
        for outage in &t.unasked_outages {
            checks.push_record([
                t.name.clone(),
                "unasked outage".into(),
                "FAILED".into(),
                shorten(outage),
            ]);
        }
        for c in &t.checks {
            let status = match c.status {
                CheckStatus::Passed => "passed",
                CheckStatus::Failed => "FAILED",
                CheckStatus::Unknown => "UNKNOWN",
            };
            checks.push_record([t.name.clone(), c.title(), status.into(), shorten(&c.detail)]);
        }
    }
    if let Some(c) = r.platform.as_ref().and_then(|p| p.cross_store.as_ref()) {
        checks.push_record([
            crate::spec::PLATFORM.into(),
            "cross-store".into(),
            if c.passed { "passed" } else { "FAILED" }.into(),
            shorten(&c.summary()),
        ]);
    }
    checks
}

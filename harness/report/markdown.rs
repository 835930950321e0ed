//! `report.md`: the run in a page a person (or a CI job summary) reads.

use std::fmt::Write as _;

use super::{FaultRecord, PlatformReport, Report, TargetReport, WriteLatency};
use crate::checks::{CheckResult, CheckStatus};
use crate::util::seconds;

pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    header(&mut md, r);
    summary_table(&mut md, r);
    if let Some(p) = &r.platform {
        platform(&mut md, p);
    }
    for t in &r.targets {
        target(&mut md, t);
    }
    faults(&mut md, &r.faults);
    md
}

/// The title with the outcome, then the run, the scenario file and any error.
fn header(md: &mut String, r: &Report) {
    let _ = writeln!(
        md,
        "# drillrig: {} — {}\n",
        r.scenario,
        r.outcome.as_str().to_uppercase()
    );
    if !r.description.is_empty() {
        let _ = writeln!(md, "{}\n", r.description);
    }
    let _ = writeln!(
        md,
        "- run `{}`, started {}, took {}",
        r.run_id,
        r.started_at,
        seconds(r.duration_ms)
    );
    let _ = writeln!(md, "- scenario file `{}`, seed {}", r.scenario_file, r.seed);
    if let Some(e) = &r.error {
        let _ = writeln!(md, "- **{}**: {e}", r.outcome.as_str());
    }
    md.push('\n');
}

/// One row a target: its objectives, what it achieved, its checks and verdict.
fn summary_table(md: &mut String, r: &Report) {
    let _ = writeln!(
        md,
        "| target | RTO target | RTO achieved | RPO target | RPO achieved | lost writes | holes | checks | verdict |"
    );
    let _ = writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for t in &r.targets {
        let passed = t
            .checks
            .iter()
            .filter(|c| c.status == CheckStatus::Passed)
            .count();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {}/{} passed | {} |",
            t.name,
            seconds(t.rto.target_ms),
            t.rto.achieved_ms.map_or("—".into(), seconds),
            seconds(t.rpo.target_ms),
            t.rpo.achieved_ms.map_or("—".into(), seconds),
            count(t.rpo.lost_writes, &t.rpo),
            count(t.rpo.holes, &t.rpo),
            passed,
            t.checks.len(),
            if t.met() { "met" } else { "**missed**" }
        );
    }
}

/// The platform's row under the targets', how its RTO and RPO were measured, and the
/// cross-store check.
fn platform(md: &mut String, p: &PlatformReport) {
    let _ = writeln!(
        md,
        "| **{}** | {} | {} | {} | {} | {} | | | {} |",
        crate::spec::PLATFORM,
        seconds(p.rto.target_ms),
        p.rto.achieved_ms.map_or("—".into(), seconds),
        seconds(p.rpo.target_ms),
        p.rpo.achieved_ms.map_or("—".into(), seconds),
        p.rpo
            .lost_writes
            .map_or("unknown".into(), |n| n.to_string()),
        if p.met { "met" } else { "**missed**" }
    );
    let _ = writeln!(
        md,
        "\nThe platform's RTO runs from the first fault{} to the last recovery{}; its RPO is the worst target's{}.",
        p.rto
            .first_fault_at_ms
            .map_or(String::new(), |ms| format!(" (at {})", seconds(ms))),
        match (&p.rto.last_target, p.rto.recovered_at_ms) {
            (Some(t), Some(ms)) => format!(" ({t}, at {})", seconds(ms)),
            _ => p
                .rto
                .note
                .as_ref()
                .map_or(String::new(), |n| format!(" ({n})")),
        },
        p.rpo
            .worst_target
            .as_ref()
            .map_or(String::new(), |t| format!(" ({t})")),
    );
    if let Some(c) = &p.cross_store {
        let _ = writeln!(
            md,
            "\nCross-store check: **{}**. {}.",
            if c.passed { "passed" } else { "failed" },
            c.summary()
        );
        for u in &c.unexplained {
            let _ = writeln!(md, "- {u}");
        }
    }
}

/// A target's section: image, recovery phases, notes, write latency, restore, workload and
/// checks.
fn target(md: &mut String, t: &TargetReport) {
    let _ = writeln!(md, "\n## {} ({})\n", t.name, t.kind);
    if let Some(image) = &t.image {
        let _ = write!(md, "Image `{}`", image.image);
        if let Some(note) = &image.note {
            let _ = write!(md, " ({note})");
        }
        md.push_str(".\n\n");
    }
    let phases = t.rto.phases.entries();
    if !phases.is_empty() {
        let _ = writeln!(
            md,
            "Recovery phases: {}.\n",
            phases
                .iter()
                .map(|(n, ms)| format!("{n} {}", seconds(*ms)))
                .collect::<Vec<_>>()
                .join(" → ")
        );
    }
    if let Some(note) = &t.rto.note {
        let _ = writeln!(md, "RTO: {note}\n");
    }
    for outage in &t.unasked_outages {
        let _ = writeln!(md, "Outage no fault caused: {outage}\n");
    }
    if let Some(w) = &t.write_latency {
        write_latency(md, w);
    }
    if let Some(note) = &t.rpo.note {
        let _ = writeln!(md, "RPO: {note}\n");
    }
    restore(md, t);
    let w = &t.workload;
    let _ = writeln!(
        md,
        "Workload: {} writes attempted ({} ok, {} fail, {} info); acknowledged writes lost: {}; unacknowledged present: {}.\n",
        w.attempted,
        w.ok,
        w.fail,
        w.info,
        count(t.rpo.lost_writes, &t.rpo),
        count(t.rpo.unacked_present, &t.rpo)
    );
    if !t.checks.is_empty() {
        checks_table(md, &t.checks);
    }
}

/// The acknowledged-write p99 before, during and after a latency fault, and its objective.
fn write_latency(md: &mut String, w: &WriteLatency) {
    let ms = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.1} ms"));
    let _ = write!(
        md,
        "Acknowledged-write p99: {} before the latency fault, {} during it ({} of {} writes unacknowledged), {} after",
        ms(w.before.p99_ms),
        ms(w.during.p99_ms),
        w.during.unacknowledged,
        w.during.writes + w.during.unacknowledged,
        ms(w.after.p99_ms)
    );
    if let Some(o) = &w.objective {
        let _ = write!(
            md,
            "; objective write_p99 {} ms: {} counting the unacknowledged, **{}**",
            o.target_ms,
            ms(o.achieved_ms),
            if o.met { "met" } else { "missed" }
        );
    }
    md.push_str(".\n\n");
}

/// Where the restore came from, the offsite copy, and what the restore prepared, reached,
/// noted and replaced.
fn restore(md: &mut String, t: &TargetReport) {
    let _ = writeln!(
        md,
        "Restore from `{}`{}{}{}.\n",
        t.restore.from,
        t.restore
            .backup_id
            .map(|id| format!(" (backup {id})"))
            .unwrap_or_default(),
        t.restore
            .restored
            .recovery_target
            .as_ref()
            .map(|r| format!(", recovering to {r}"))
            .unwrap_or_default(),
        t.restore
            .error
            .as_ref()
            .map(|e| format!(": **failed**: {e}"))
            .unwrap_or_default()
    );
    if let Some(o) = &t.offsite {
        let _ = writeln!(md, "Offsite (`{}`): {}.\n", o.location, o.summary());
    }
    if let Some(prepared) = &t.restore.restored.prepared {
        let _ = writeln!(md, "Before the restore: {prepared}.\n");
    }
    if let Some(reached) = &t.restore.restored.reached {
        let _ = writeln!(md, "Recovery: {reached}.\n");
    }
    let failover = t.failover_summary();
    if !failover.is_empty() {
        md.push_str("Failover:\n\n");
        for line in &failover {
            let _ = writeln!(md, "- {line}");
        }
        md.push('\n');
    }
    if let Some(note) = &t.restore.restored.note {
        let label = if t.restore.restored.failover.is_some() {
            "Note"
        } else {
            "Backup chain"
        };
        let _ = writeln!(md, "**{label}:** {note}.\n");
    }
    if !t.restore.restored.overrides.is_empty() {
        let _ = writeln!(
            md,
            "Replaced in the backup's configuration: {}.\n",
            t.restore
                .restored
                .overrides
                .iter()
                .map(|o| format!("`{o}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// A target's checks: status and detail, with `|` escaped for the table.
fn checks_table(md: &mut String, checks: &[CheckResult]) {
    let _ = writeln!(md, "| check | status | detail |\n| --- | --- | --- |");
    for c in checks {
        let status = match c.status {
            CheckStatus::Passed => "passed",
            CheckStatus::Failed => "**failed**",
            CheckStatus::Unknown => "**unknown**",
        };
        let _ = writeln!(
            md,
            "| {} | {status} | {} |",
            c.title(),
            c.detail.replace('|', "\\|")
        );
    }
}

/// The faults: when each was scheduled and injected, and how it went.
fn faults(md: &mut String, faults: &[FaultRecord]) {
    if faults.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Faults\n\n| target | fault | scheduled | injected | result |\n| --- | --- | --- | --- | --- |"
    );
    for f in faults {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            f.target,
            f.kind,
            seconds(f.scheduled_ms),
            f.injected_at_ms.map_or("—".into(), seconds),
            f.error.as_deref().unwrap_or("done")
        );
    }
}

/// A count from the read-back, or "unknown" with why when the writes were never read back.
fn count(n: Option<u64>, rpo: &super::Rpo) -> String {
    n.map_or_else(|| super::unknown(rpo.unknown.as_deref()), |n| n.to_string())
}

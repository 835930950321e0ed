//! The suite's closing table on the terminal: one row per target of each drill.

use tabled::settings::Style;
use tabled::{Table, builder::Builder};

use crate::history::RunRecord;
use crate::util::seconds;

/// The closing table of a suite: one row per target of each drill.
pub fn terminal_suite(runs: &[RunRecord]) -> String {
    let ms = |v: Option<i64>| v.map_or("—".into(), |v| seconds(v.max(0) as u64));
    let mut table = Builder::default();
    table.push_record([
        "scenario",
        "outcome",
        "target",
        "RTO / target",
        "RPO / target",
        "lost",
    ]);
    for r in runs {
        for t in &r.targets {
            table.push_record([
                r.scenario.clone(),
                r.outcome.to_uppercase(),
                t.target.clone(),
                format!("{} / {}", ms(t.rto_achieved_ms), ms(Some(t.rto_target_ms))),
                format!("{} / {}", ms(t.rpo_achieved_ms), ms(Some(t.rpo_target_ms))),
                t.lost_writes_text(),
            ]);
        }
    }
    let met = runs.iter().filter(|r| r.outcome == "met").count();
    format!(
        "suite: {met} of {} drill(s) met\n{}\n",
        runs.len(),
        Table::from(table).with(Style::sharp())
    )
}

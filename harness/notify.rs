//! Run notifications (`drillrig run --notify URL`): when a suite ends, a JSON summary of its runs
//! is POSTed to a webhook. It reads finished results only, as [`crate::publish`] does: the
//! suite's [`RunRecord`]s and its final [`Exit`].
//!
//! The summary holds the suite's outcome and exit code and, per run, its outcome, its folder
//! and each target's achieved and target RTO and RPO with the checks that did not pass. Each
//! attempt is bounded by [`TIMEOUT`]; a failed attempt is retried after [`BACKOFF`], doubled
//! each time, up to [`ATTEMPTS`] attempts. The result ([`Delivery`]) is written as
//! `notification.json` into every run's folder ([`record`]); it never changes an exit code.
//!
//! Webhook URLs often carry a token in their path or query, so the URL is shown and recorded
//! only as `scheme://host[:port]` ([`Webhook::target`]), and errors are stripped of it.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::exit::Exit;
use crate::history::RunRecord;
use crate::report::{CheckOutcome, TargetOutcome};
use crate::util;

/// The most attempts at one notification.
pub const ATTEMPTS: u32 = 3;
/// The wait after the first failed attempt; it doubles after each further one.
pub const BACKOFF: Duration = Duration::from_secs(1);
/// The bound on one attempt, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// When a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Only when the suite's exit is not 0.
    Failure,
    /// After every suite.
    Always,
}

impl When {
    /// Whether a suite that ended with `exit` is notified.
    pub fn due(self, exit: Exit) -> bool {
        match self {
            When::Always => true,
            When::Failure => exit != Exit::Met,
        }
    }
}

/// Where notifications go: an http(s) URL.
#[derive(Debug, Clone)]
pub struct Webhook {
    url: url::Url,
}

impl Webhook {
    /// Parses a webhook URL. The error never repeats the URL (it may hold a token).
    pub fn parse(text: &str) -> Result<Webhook, String> {
        let url = url::Url::parse(text).map_err(|e| {
            format!("not a URL ({e}): expected an http:// or https:// URL, e.g. https://hooks.example.com/drillrig")
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "scheme {:?}: expected an http:// or https:// URL, e.g. https://hooks.example.com/drillrig",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(
                "the URL names no host: expected e.g. https://hooks.example.com/drillrig".into(),
            );
        }
        Ok(Webhook { url })
    }

    /// `scheme://host[:port]`: what may be shown and recorded of the URL.
    pub fn target(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        match self.url.port() {
            Some(port) => format!("{}://{host}:{port}", self.url.scheme()),
            None => format!("{}://{host}", self.url.scheme()),
        }
    }

    /// `text` with every part of the URL beyond [`Webhook::target`] masked.
    fn redact(&self, text: &str) -> String {
        let mut text = text.replace(self.url.as_str(), &self.target());
        let secrets = [
            Some(self.url.path()),
            self.url.query(),
            self.url.fragment(),
            Some(self.url.username()),
            self.url.password(),
        ];
        // Shorter ones (`/`, `/x`) would mask ordinary words, and hide nothing.
        for secret in secrets.into_iter().flatten().filter(|s| s.len() >= 3) {
            text = text.replace(secret, "…");
        }
        text
    }
}

/// The JSON body of a notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub drillrig_version: String,
    /// `met`, `missed`, `error` or `interrupted`, from the suite's exit.
    pub outcome: &'static str,
    pub exit_code: u8,
    pub runs: Vec<RunSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    pub scenario: String,
    pub run_id: String,
    pub outcome: String,
    pub started_at: String,
    pub report_dir: Option<String>,
    pub targets: Vec<TargetSummary>,
}

/// A target in a notification: its outcome as the history keeps it, and the checks that did not
/// pass, apart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetSummary {
    #[serde(flatten)]
    pub outcome: TargetOutcome,
    /// Every check whose status is not `passed`.
    pub failed_checks: Vec<CheckOutcome>,
}

/// A suite's outcome as its exit says it: 0 met, 1 missed, 130 interrupted, anything else an
/// error.
pub fn outcome(exit: Exit) -> &'static str {
    match exit {
        Exit::Met => "met",
        Exit::Missed => "missed",
        Exit::Interrupted => "interrupted",
        Exit::Usage | Exit::Environment => "error",
    }
}

/// The summary of a suite of `runs` that ended with `exit`.
pub fn summary(runs: &[RunRecord], exit: Exit) -> Summary {
    Summary {
        drillrig_version: env!("CARGO_PKG_VERSION").into(),
        outcome: outcome(exit),
        exit_code: exit.code(),
        runs: runs
            .iter()
            .map(|r| RunSummary {
                scenario: r.scenario.clone(),
                run_id: r.run_id.clone(),
                outcome: r.outcome.clone(),
                started_at: r.started_at.clone(),
                report_dir: r.report_dir.clone(),
                targets: r
                    .targets
                    .iter()
                    .map(|t| TargetSummary {
                        failed_checks: t.failed_checks().cloned().collect(),
                        outcome: t.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// How a notification went: `notification.json` in each run's folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub ok: bool,
    pub attempts: u32,
    /// `scheme://host[:port]` of the webhook, never its path or query.
    pub target: String,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

/// Sends the summary of a suite of `runs` that ended with `exit`, if `when` asks for it;
/// `None` when nothing was due.
pub async fn notify(
    webhook: &Webhook,
    when: When,
    runs: &[RunRecord],
    exit: Exit,
) -> Option<Delivery> {
    if !when.due(exit) {
        return None;
    }
    Some(send(webhook, &summary(runs, exit), BACKOFF).await)
}

/// POSTs `summary` to `webhook`, up to [`ATTEMPTS`] times, waiting `backoff`, then twice as
/// long, and so on, between attempts. Success is a 2xx answer; a 4xx other than 408 and 429
/// is not retried (the same request would be refused again).
pub async fn send(webhook: &Webhook, summary: &Summary, backoff: Duration) -> Delivery {
    let target = webhook.target();
    let failed = |attempts, error: String| Delivery {
        ok: false,
        attempts,
        target: target.clone(),
        error: Some(webhook.redact(&error)),
    };
    util::tls_provider();
    let client = match reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("drillrig/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => return failed(0, format!("cannot make an HTTP client: {}", chain(e))),
    };
    let mut wait = backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (error, retry) = match client.post(webhook.url.clone()).json(summary).send().await {
            Ok(response) if response.status().is_success() => {
                return Delivery {
                    ok: true,
                    attempts: attempt,
                    target,
                    error: None,
                };
            }
            Ok(response) => {
                let status = response.status();
                let permanent = status.is_client_error()
                    && status != reqwest::StatusCode::REQUEST_TIMEOUT
                    && status != reqwest::StatusCode::TOO_MANY_REQUESTS;
                (format!("HTTP {status}"), !permanent)
            }
            Err(e) if e.is_timeout() => (format!("no answer within {}s", TIMEOUT.as_secs()), true),
            Err(e) => (chain(e), true),
        };
        if !retry || attempt >= ATTEMPTS {
            return failed(attempt, error);
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
}

/// An error and its causes on one line, without the URL.
fn chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Writes `delivery` as `notification.json` into the folder of each of `runs` that has one;
/// returns the writes that failed.
pub fn record(delivery: &Delivery, runs: &[RunRecord]) -> Vec<anyhow::Error> {
    let Ok(mut json) = serde_json::to_vec_pretty(delivery) else {
        return Vec::new();
    };
    json.push(b'\n');
    runs.iter()
        .filter_map(|r| r.report_dir.as_deref())
        .filter_map(|dir| {
            util::write_atomically(&Path::new(dir).join("notification.json"), &json).err()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{CheckOutcome, TargetOutcome};

    /// reqwest is built without a crypto provider of its own: without `util::tls_provider` an
    /// HTTPS client panics when built.
    #[test]
    fn an_https_client_builds_on_the_ring_provider() {
        util::tls_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        reqwest::Client::builder()
            .https_only(true)
            .build()
            .expect("an HTTPS client builds");
    }

    fn record_with(checks: Vec<CheckOutcome>) -> RunRecord {
        RunRecord {
            run_id: "20260101T000000Z-abcd".into(),
            scenario: "pg".into(),
            scenario_file: "pg.toml".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            duration_ms: 1000,
            outcome: "missed".into(),
            error: None,
            drillrig_version: "0.0.0".into(),
            git_revision: None,
            report_dir: Some("/r/pg/1".into()),
            targets: vec![TargetOutcome {
                target: "db".into(),
                kind: "postgres".into(),
                image: None,
                dataset_rows: None,
                backup_bytes: None,
                rto_achieved_ms: Some(4000),
                rto_target_ms: 60000,
                rto_met: true,
                rpo_achieved_ms: None,
                rpo_target_ms: 10000,
                rpo_met: false,
                acked_writes: 10,
                lost_writes: Some(0),
                lost_writes_unknown: None,
                failover: None,
                phases: vec![],
                checks,
            }],
        }
    }

    fn check(name: &str, status: &str) -> CheckOutcome {
        CheckOutcome {
            name: name.into(),
            status: status.into(),
            detail: format!("{name} detail"),
            value: None,
        }
    }

    #[test]
    fn the_outcome_follows_the_exit() {
        let outcomes: Vec<_> = [
            Exit::Met,
            Exit::Missed,
            Exit::Usage,
            Exit::Environment,
            Exit::Interrupted,
        ]
        .into_iter()
        .map(outcome)
        .collect();
        assert_eq!(outcomes, ["met", "missed", "error", "error", "interrupted"]);
        assert!(!When::Failure.due(Exit::Met));
        assert!(When::Failure.due(Exit::Missed));
        assert!(When::Always.due(Exit::Met));
    }

    #[test]
    fn the_summary_lists_only_the_checks_that_did_not_pass() {
        let run = record_with(vec![
            check("row-count", "passed"),
            check("ledger", "failed"),
            check("query: x", "unknown"),
        ]);
        let json = serde_json::to_value(summary(&[run], Exit::Missed)).unwrap();
        assert_eq!(json["outcome"], "missed");
        assert_eq!(json["exit_code"], 1);
        let target = &json["runs"][0]["targets"][0];
        assert_eq!(target["rto_achieved_ms"], 4000);
        assert_eq!(target["rpo_achieved_ms"], serde_json::Value::Null);
        let failed: Vec<_> = target["failed_checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(failed, ["ledger", "query: x"]);
        assert_eq!(json["runs"][0]["report_dir"], "/r/pg/1");
    }

    #[test]
    fn only_scheme_host_and_port_of_the_url_are_shown() {
        let w = Webhook::parse("https://user:pw@hooks.example.com/t/SECRET?key=K2").unwrap();
        assert_eq!(w.target(), "https://hooks.example.com");
        let w = Webhook::parse("http://127.0.0.1:8080/hook/SECRET?k=TOKEN").unwrap();
        assert_eq!(w.target(), "http://127.0.0.1:8080");
        let said = w.redact("error for http://127.0.0.1:8080/hook/SECRET?k=TOKEN and /hook/SECRET");
        assert!(
            !said.contains("SECRET") && !said.contains("TOKEN"),
            "{said}"
        );
        assert_eq!(
            Webhook::parse("http://[::1]:9/x").unwrap().target(),
            "http://[::1]:9"
        );
        for bad in ["ftp://x", "not a url", "file:///tmp/x", "mailto:a@b.c"] {
            let e = Webhook::parse(bad).unwrap_err();
            assert!(e.contains("http://"), "{bad}: {e}");
        }
        assert!(
            !Webhook::parse("ftp://h/SECRET")
                .unwrap_err()
                .contains("SECRET")
        );
    }
}

//! `drillrig run --notify URL`: the suite's JSON summary is POSTed to a local HTTP listener. The
//! drill is one that ends at once with exit 3 (its backup source does not exist), so no
//! container starts; the notification never changes that exit, and the URL's path (where
//! webhooks keep their token) is never shown or recorded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{BIN, engine, out_dir};

const SECRET: &str = "SECRET-TOKEN";

const SCENARIO: &str = r#"schema = 1
name = "notify-env-error"

[targets.db]
kind = "postgres"
source = { path = "/nonexistent/backups" }
restore = { from = "latest" }
objectives = { rto = "5m", rpo = "1h" }
"#;

/// One request the listener received.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    content_type: String,
    body: Vec<u8>,
}

impl Request {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// An HTTP listener on 127.0.0.1 that answers every request with `status` and keeps it.
struct Listener {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Listener {
    fn start(status: u16) -> Listener {
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        std::thread::spawn(move || {
            for stream in socket.incoming().flatten() {
                if let Some(request) = serve(stream, status) {
                    kept.lock().unwrap().push(request);
                }
            }
        });
        Listener { port, requests }
    }

    /// The webhook URL, with a token in its path and query.
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook/{SECRET}?key={SECRET}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

/// Reads one request (head, then `Content-Length` bytes of body) and answers `status`.
fn serve(stream: TcpStream, status: u16) -> Option<Request> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let (mut length, mut content_type) = (0, String::new());
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "content-type" => content_type = value.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.flush();
    Some(Request {
        method,
        path,
        content_type,
        body,
    })
}

struct Ran {
    output: Output,
    /// The run's folder (`--out`).
    dir: PathBuf,
    elapsed: Duration,
}

impl Ran {
    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn notification(&self) -> Value {
        let text = std::fs::read_to_string(self.dir.join("notification.json"))
            .unwrap_or_else(|e| panic!("no notification.json ({e}):\n{}", self.stderr()));
        assert!(
            !text.contains(SECRET),
            "notification.json shows the token: {text}"
        );
        serde_json::from_str(&text).unwrap()
    }

    /// Neither output shows the URL's token.
    fn assert_token_hidden(&self) {
        for (name, text) in [("stdout", self.stdout()), ("stderr", self.stderr())] {
            assert!(!text.contains(SECRET), "{name} shows the token:\n{text}");
        }
    }
}

/// `drillrig run` of the failing scenario with `args`, DRILLRIG_NOTIFY unset unless `env` sets
/// it.
fn run(test: &str, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let root = out_dir(&format!("notify-{test}"));
    std::fs::create_dir_all(&root).unwrap();
    let scenario = root.join("notify-env-error.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let dir = root.join("run");
    let started = Instant::now();
    let output = Command::new(BIN)
        .args(["run", scenario.to_str().unwrap(), "--out"])
        .arg(&dir)
        .args(["--history", "none"])
        .args(args)
        .env_remove("DRILLRIG_NOTIFY")
        .envs(env.iter().copied())
        .output()
        .expect("run drillrig");
    Ran {
        output,
        dir,
        elapsed: started.elapsed(),
    }
}

#[test]
fn a_failed_run_posts_one_summary_and_keeps_its_exit() {
    let _engine = engine();
    let without = run("without", &[], &[]);
    assert_eq!(without.code(), Some(3), "{}", without.stderr());
    assert!(!without.dir.join("notification.json").exists());

    let listener = Listener::start(200);
    let url = listener.url();
    let ran = run(
        "failure",
        &["--notify", &url, "--notify-on", "failure"],
        &[],
    );
    assert_eq!(ran.code(), Some(3), "{}", ran.stderr());
    ran.assert_token_hidden();
    assert!(
        !ran.stderr().contains("warning: notification"),
        "{}",
        ran.stderr()
    );

    let requests = listener.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, format!("/hook/{SECRET}?key={SECRET}"));
    assert!(
        request.content_type.starts_with("application/json"),
        "{}",
        request.content_type
    );
    let summary = request.json();
    assert_eq!(summary["outcome"], "error", "{summary:#}");
    assert_eq!(summary["exit_code"], 3);
    assert_eq!(summary["drillrig_version"], env!("CARGO_PKG_VERSION"));
    let runs = summary["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{summary:#}");
    let r = &runs[0];
    assert_eq!(r["scenario"], "notify-env-error");
    assert_eq!(r["outcome"], "error");
    assert_eq!(r["report_dir"], ran.dir.display().to_string());
    assert!(r["run_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(r["started_at"].is_string());
    let target = &r["targets"][0];
    assert_eq!(target["target"], "db");
    assert_eq!(target["kind"], "postgres");
    assert_eq!(target["rto_target_ms"], 300_000);
    assert_eq!(target["rpo_target_ms"], 3_600_000);
    assert_eq!(target["rto_met"], false);
    assert!(target["rto_achieved_ms"].is_null());
    assert!(target["failed_checks"].is_array());

    let recorded = ran.notification();
    assert_eq!(recorded["ok"], true, "{recorded}");
    assert_eq!(recorded["attempts"], 1);
    assert_eq!(
        recorded["target"],
        format!("http://127.0.0.1:{}", listener.port)
    );
    assert!(recorded["error"].is_null());
}

#[test]
fn always_is_the_same_for_a_failure_and_the_variable_names_the_url() {
    let _engine = engine();
    let listener = Listener::start(204);
    let url = listener.url();
    let ran = run(
        "always",
        &["--notify-on", "always"],
        &[("DRILLRIG_NOTIFY", &url)],
    );
    assert_eq!(ran.code(), Some(3), "{}", ran.stderr());
    ran.assert_token_hidden();
    let requests = listener.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].json()["outcome"], "error");
    assert_eq!(ran.notification()["ok"], true);
}

#[test]
fn a_listener_answering_500_gets_three_attempts_and_the_exit_stays() {
    let _engine = engine();
    let listener = Listener::start(500);
    let url = listener.url();
    let ran = run("http-500", &["--notify", &url], &[]);
    assert_eq!(ran.code(), Some(3), "{}", ran.stderr());
    ran.assert_token_hidden();
    assert_eq!(listener.requests().len(), 3);
    let target = format!("http://127.0.0.1:{}", listener.port);
    assert!(
        ran.stderr().contains(&format!(
            "warning: notification to {target} failed after 3 attempt(s): HTTP 500"
        )),
        "{}",
        ran.stderr()
    );
    // Backoff 1 s, then 2 s.
    assert!(ran.elapsed >= Duration::from_secs(3), "{:?}", ran.elapsed);
    let recorded = ran.notification();
    assert_eq!(recorded["ok"], false, "{recorded}");
    assert_eq!(recorded["attempts"], 3);
    assert_eq!(recorded["target"], target);
    assert!(
        recorded["error"].as_str().unwrap().contains("500"),
        "{recorded}"
    );
}

#[test]
fn a_refusing_listener_is_not_asked_again() {
    let _engine = engine();
    let listener = Listener::start(404);
    let url = listener.url();
    let ran = run("http-404", &["--notify", &url], &[]);
    assert_eq!(ran.code(), Some(3), "{}", ran.stderr());
    assert_eq!(listener.requests().len(), 1);
    assert!(
        ran.stderr().contains("failed after 1 attempt(s): HTTP 404"),
        "{}",
        ran.stderr()
    );
    assert_eq!(ran.notification()["attempts"], 1);
}

#[test]
fn an_unreachable_url_warns_and_keeps_the_exit() {
    let _engine = engine();
    // A port nothing listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook/{SECRET}?key={SECRET}");
    let ran = run("unreachable", &["--notify", &url], &[]);
    assert_eq!(ran.code(), Some(3), "{}", ran.stderr());
    ran.assert_token_hidden();
    assert!(
        ran.stderr().contains(&format!(
            "warning: notification to http://127.0.0.1:{port} failed after 3 attempt(s): "
        )),
        "{}",
        ran.stderr()
    );
    let recorded = ran.notification();
    assert_eq!(recorded["ok"], false);
    assert_eq!(recorded["attempts"], 3);
}

#[test]
fn a_url_that_is_not_http_is_a_usage_error_before_any_drill() {
    for (test, url) in [
        ("ftp", "ftp://x"),
        ("not-a-url", "hooks.example.com/SECRET-TOKEN"),
    ] {
        let ran = run(test, &["--notify", url], &[]);
        assert_eq!(ran.code(), Some(2), "{url}: {}", ran.stderr());
        assert!(
            ran.stderr().contains("error: --notify") && ran.stderr().contains("http://"),
            "{}",
            ran.stderr()
        );
        ran.assert_token_hidden();
        assert!(!ran.dir.exists(), "{url}: a drill ran");
    }
    let ran = run(
        "bad-env",
        &[],
        &[("DRILLRIG_NOTIFY", "ftp://x/SECRET-TOKEN")],
    );
    assert_eq!(ran.code(), Some(2), "{}", ran.stderr());
    ran.assert_token_hidden();
    assert!(!ran.dir.exists());
}

/// An empty DRILLRIG_NOTIFY (a CI secret that is not set) asks for no notification.
#[test]
fn an_empty_variable_asks_for_no_notification() {
    let _engine = engine();
    let ran = run("empty-env", &[], &[("DRILLRIG_NOTIFY", "")]);
    assert_eq!(ran.code(), Some(3), "{}", ran.stderr());
    assert!(!ran.dir.join("notification.json").exists());
    assert!(!ran.stderr().contains("notification"), "{}", ran.stderr());
}

//! Run reports: the table printed at the end, JUnit XML and JSON.
//!
//! JUnit: one `<testsuites>` with one `<testsuite>` per command (`lab run`, `lab sweep`), one
//! `<testcase>` per scenario or sweep case, a `<failure message=..>` with the step, the process
//! and what each process saw, or `<skipped message=..>`. JSON: `{"passed": n, "failed": n,
//! "skipped": n, "interrupted": n, "cases": [{"name", "file", "result", "seconds", "notes",
//! "skip_reason", "failure": {"step", "step_text", "line", "process", "message", "views":
//! [{"process", "list"}]}}]}`.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::runner::{CaseResult, Outcome};

mod merge;
pub use merge::{merge_junit, MergeError};

/// Writing a report failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct ReportError {
    /// The file.
    pub path: String,
    /// Cause.
    pub source: std::io::Error,
}

/// Counts of each outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Passed.
    pub passed: usize,
    /// Failed.
    pub failed: usize,
    /// Skipped.
    pub skipped: usize,
    /// Interrupted.
    pub interrupted: usize,
}

impl Totals {
    /// Counts results.
    pub fn of(results: &[CaseResult]) -> Totals {
        let mut t = Totals::default();
        for r in results {
            match r.outcome {
                Outcome::Passed => t.passed += 1,
                Outcome::Failed(_) => t.failed += 1,
                Outcome::Skipped(_) => t.skipped += 1,
                Outcome::Interrupted => t.interrupted += 1,
            }
        }
        t
    }

    /// Whether the run counts as a success.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.interrupted == 0
    }
}

fn word(o: &Outcome) -> &'static str {
    match o {
        Outcome::Passed => "passed",
        Outcome::Failed(_) => "FAILED",
        Outcome::Skipped(_) => "skipped",
        Outcome::Interrupted => "interrupted",
    }
}

/// The end-of-run table, then the details of each failure.
pub fn table(results: &[CaseResult]) -> String {
    let w = results.iter().map(|r| r.name.chars().count()).max().unwrap_or(8).clamp(8, 72);
    let mut s = String::new();
    let _ = writeln!(s, "{:<w$}  {:<11}  {:>8}", "scenario", "result", "time");
    for r in results {
        let mut line = format!("{:<w$}  {:<11}  {:>7.2}s", r.name, word(&r.outcome), r.elapsed.as_secs_f64());
        if let Outcome::Skipped(why) = &r.outcome {
            line.push_str(&format!("  skipped: {why}"));
        }
        let _ = writeln!(s, "{line}");
    }
    for r in results {
        if let Outcome::Failed(f) = &r.outcome {
            let _ = writeln!(s, "\n{} ({}):\n  {}", r.name, r.file.display(), f.to_string().replace('\n', "\n  "));
        }
    }
    let t = Totals::of(results);
    let _ = write!(s, "\n{} passed, {} failed, {} skipped", t.passed, t.failed, t.skipped);
    if t.interrupted > 0 {
        let _ = write!(s, ", {} interrupted", t.interrupted);
    }
    s
}

/// XML-escapes text for attributes and content.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\n' => o.push_str("&#10;"),
            c if (c as u32) < 0x20 && c != '\t' => {}
            c => o.push(c),
        }
    }
    o
}

/// JUnit XML for one suite.
pub fn junit(suite: &str, results: &[CaseResult]) -> String {
    let t = Totals::of(results);
    let secs: f64 = results.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"lab\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{secs:.3}\">",
        results.len(),
        t.failed + t.interrupted,
        t.skipped
    );
    let _ = writeln!(
        s,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{secs:.3}\">",
        esc(suite),
        results.len(),
        t.failed + t.interrupted,
        t.skipped
    );
    for r in results {
        let class = r.file.file_stem().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "lab".into());
        let _ = write!(
            s,
            "    <testcase classname=\"lab.{}\" name=\"{}\" time=\"{:.3}\"",
            esc(&class),
            esc(&r.name),
            r.elapsed.as_secs_f64()
        );
        match &r.outcome {
            Outcome::Passed => s.push_str("/>\n"),
            Outcome::Skipped(why) => {
                let _ = writeln!(s, ">\n      <skipped message=\"{}\"/>\n    </testcase>", esc(why));
            }
            Outcome::Interrupted => {
                let _ = writeln!(s, ">\n      <failure message=\"interrupted\"/>\n    </testcase>");
            }
            Outcome::Failed(f) => {
                let msg = if f.step == 0 {
                    f.message.clone()
                } else {
                    format!("step {} ({}) in {}: {}", f.step, f.step_text, f.process, f.message)
                };
                let _ = writeln!(
                    s,
                    ">\n      <failure message=\"{}\" type=\"scenario\">{}</failure>\n    </testcase>",
                    esc(&msg),
                    esc(&f.to_string())
                );
            }
        }
    }
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
}

#[derive(Serialize)]
struct JsonView<'a> {
    process: &'a str,
    list: &'a str,
}

#[derive(Serialize)]
struct JsonFailure<'a> {
    step: usize,
    step_text: &'a str,
    line: usize,
    process: &'a str,
    message: &'a str,
    views: Vec<JsonView<'a>>,
}

#[derive(Serialize)]
struct JsonCase<'a> {
    name: &'a str,
    file: String,
    result: &'static str,
    seconds: f64,
    notes: &'a [String],
    skip_reason: Option<&'a str>,
    failure: Option<JsonFailure<'a>>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    suite: &'a str,
    #[serde(flatten)]
    totals: Totals,
    cases: Vec<JsonCase<'a>>,
}

/// The JSON report.
pub fn json(suite: &str, results: &[CaseResult]) -> String {
    let cases = results
        .iter()
        .map(|r| JsonCase {
            name: &r.name,
            file: r.file.display().to_string(),
            result: match r.outcome {
                Outcome::Passed => "passed",
                Outcome::Failed(_) => "failed",
                Outcome::Skipped(_) => "skipped",
                Outcome::Interrupted => "interrupted",
            },
            seconds: r.elapsed.as_secs_f64(),
            notes: &r.notes,
            skip_reason: match &r.outcome {
                Outcome::Skipped(w) => Some(w),
                _ => None,
            },
            failure: match &r.outcome {
                Outcome::Failed(f) => Some(JsonFailure {
                    step: f.step,
                    step_text: &f.step_text,
                    line: f.line,
                    process: &f.process,
                    message: &f.message,
                    views: f.views.iter().map(|(p, l)| JsonView { process: p, list: l }).collect(),
                }),
                _ => None,
            },
        })
        .collect();
    let r = JsonReport { suite, totals: Totals::of(results), cases };
    serde_json::to_string_pretty(&r).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Writes a report file.
pub fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|source| ReportError { path: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Failure;
    use std::time::Duration;

    #[test]
    fn junit_escapes_and_counts() {
        let f = Failure {
            step: 2,
            step_text: "primary: attach <x>".into(),
            line: 7,
            process: "s1".into(),
            message: "a \"b\" & c".into(),
            views: vec![("s1".into(), "0 net_null0".into())],
        };
        let rs = vec![
            CaseResult {
                name: "one".into(),
                file: "a/one.toml".into(),
                outcome: Outcome::Passed,
                elapsed: Duration::from_millis(10),
                notes: vec![],
            },
            CaseResult {
                name: "two".into(),
                file: "a/two.toml".into(),
                outcome: Outcome::Failed(Box::new(f)),
                elapsed: Duration::from_millis(10),
                notes: vec![],
            },
        ];
        let x = junit("lab run", &rs);
        assert!(x.contains("tests=\"2\" failures=\"1\""), "{x}");
        assert!(x.contains("&lt;x&gt;") && x.contains("&quot;b&quot; &amp; c"), "{x}");
        let j: serde_json::Value = serde_json::from_str(&json("lab run", &rs)).unwrap();
        assert_eq!(j["failed"], 1);
        assert_eq!(j["cases"][1]["failure"]["line"], 7);
    }
}

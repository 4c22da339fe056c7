//! `lab report merge`: the JUnit files of a partitioned run (`lab run --partition K/N` on N CI
//! runners) as one report. Test suites of the same name become one; every count is recounted
//! from the test cases themselves (a `<failure>` or `<error>` makes a failed case, `<skipped>` a
//! skipped one), so a file cannot make the totals lie. Input is untrusted: malformed XML is an
//! error naming the file and the position, and nothing is written.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, Writer};

/// Why files could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// Not well-formed XML (or not UTF-8).
    #[error("{file}: not JUnit XML at byte {position}: {message}")]
    Malformed {
        /// The file.
        file: String,
        /// Byte offset.
        position: u64,
        /// What the parser met.
        message: String,
    },
    /// No `<testsuite>` in a file.
    #[error("{file}: no <testsuite> element")]
    NoSuite {
        /// The file.
        file: String,
    },
}

#[derive(Default)]
struct Suite {
    tests: u64,
    failures: u64,
    skipped: u64,
    time: f64,
    body: Vec<u8>,
}

fn attr(e: &BytesStart<'_>, name: &str) -> Option<String> {
    e.try_get_attribute(name).ok().flatten().and_then(|a| a.unescape_value().ok()).map(|v| v.into_owned())
}

fn esc(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// Merges `(file name, text)` pairs into one JUnit document.
pub fn merge_junit(files: &[(String, String)]) -> Result<String, MergeError> {
    let mut suites: BTreeMap<String, Suite> = BTreeMap::new();
    for (file, text) in files {
        let mut r = Reader::from_str(text);
        let bad = |r: &Reader<&[u8]>, e: &dyn std::fmt::Display| MergeError::Malformed {
            file: file.clone(),
            position: r.buffer_position(),
            message: e.to_string(),
        };
        // Where we are: in a suite (its name), and how deep inside it.
        let mut cur: Option<String> = None;
        let mut depth = 0usize;
        let mut case_failed = false;
        let mut case_skipped = false;
        let mut found = false;
        loop {
            let ev = r.read_event().map_err(|e| bad(&r, &e))?;
            match (&ev, cur.as_ref()) {
                (Event::Eof, _) => break,
                (Event::Start(e), None) if e.name().as_ref() == b"testsuite" => {
                    let name = attr(e, "name").unwrap_or_else(|| "lab".into());
                    suites.entry(name.clone()).or_default();
                    cur = Some(name);
                    depth = 0;
                    found = true;
                }
                (Event::Empty(e), None) if e.name().as_ref() == b"testsuite" => {
                    suites.entry(attr(e, "name").unwrap_or_else(|| "lab".into())).or_default();
                    found = true;
                }
                (Event::End(e), Some(_)) if depth == 0 && e.name().as_ref() == b"testsuite" => cur = None,
                (_, Some(name)) => {
                    let s = suites.get_mut(name).expect("entered above");
                    match &ev {
                        Event::Start(e) | Event::Empty(e) => {
                            let tag = e.name().as_ref().to_vec();
                            if depth == 0 && tag == b"testcase" {
                                s.tests += 1;
                                s.time += attr(e, "time").and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0);
                                case_failed = false;
                                case_skipped = false;
                            } else if depth == 1 && (tag == b"failure" || tag == b"error") {
                                case_failed = true;
                            } else if depth == 1 && tag == b"skipped" {
                                case_skipped = true;
                            }
                            // An empty <testcase .../> is a passed case: nothing inside it.
                            if matches!(ev, Event::Start(_)) {
                                depth += 1;
                            }
                        }
                        Event::End(_) => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                s.failures += u64::from(case_failed);
                                s.skipped += u64::from(case_skipped && !case_failed);
                            }
                        }
                        _ => {}
                    }
                    let mut w = Writer::new(&mut s.body);
                    w.write_event(ev.borrow()).map_err(|e| bad(&r, &e))?;
                }
                _ => {}
            }
        }
        if cur.is_some() {
            return Err(bad(&r, &"unclosed <testsuite>"));
        }
        if !found {
            return Err(MergeError::NoSuite { file: file.clone() });
        }
    }
    let (mut tests, mut failures, mut skipped, mut time) = (0, 0, 0, 0.0);
    for s in suites.values() {
        tests += s.tests;
        failures += s.failures;
        skipped += s.skipped;
        time += s.time;
    }
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"lab\" tests=\"{tests}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{time:.3}\">"
    );
    for (name, s) in &suites {
        let _ = write!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{:.3}\">",
            esc(name),
            s.tests,
            s.failures,
            s.skipped,
            s.time
        );
        out.push_str(&String::from_utf8_lossy(&s.body));
        out.push_str("</testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(cases: &str) -> String {
        format!("<?xml version=\"1.0\"?>\n<testsuites name=\"lab\" tests=\"99\">\n  <testsuite name=\"lab run\" tests=\"99\" failures=\"0\">\n{cases}  </testsuite>\n</testsuites>\n")
    }

    #[test]
    fn parts_become_one_suite_with_counts_from_the_cases() {
        let a = part("    <testcase classname=\"lab.a\" name=\"a &amp; b\" time=\"1.5\"/>\n    <testcase name=\"f\" time=\"0.5\">\n      <failure message=\"step 2\">x &lt; y</failure>\n    </testcase>\n");
        let b = part("    <testcase name=\"s\" time=\"0\">\n      <skipped message=\"no dpdk\"/>\n    </testcase>\n");
        let m = merge_junit(&[("a.xml".into(), a), ("b.xml".into(), b)]).unwrap();
        assert!(m.contains("<testsuites name=\"lab\" tests=\"3\" failures=\"1\" skipped=\"1\" time=\"2.000\">"), "{m}");
        assert_eq!(m.matches("<testsuite ").count(), 1, "{m}");
        assert!(m.contains("name=\"a &amp; b\"") && m.contains("x &lt; y"), "escapes kept: {m}");
        // Well-formed, and merging the merge changes nothing in the counts.
        let again = merge_junit(&[("m.xml".into(), m.clone())]).unwrap();
        assert!(again.contains("tests=\"3\" failures=\"1\" skipped=\"1\""), "{again}");
    }

    #[test]
    fn malformed_or_empty_input_is_an_error_naming_the_file() {
        for (text, want) in [
            ("<testsuites><testsuite name=\"x\"><testcase></testsuite>", "bad.xml: not JUnit XML"),
            ("<testsuites></testsuites>", "bad.xml: no <testsuite>"),
            ("<testsuite name=\"x\"><testcase name=\"a\"/>", "unclosed"),
        ] {
            let e = merge_junit(&[("bad.xml".into(), text.into())]).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
